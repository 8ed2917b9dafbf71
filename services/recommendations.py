"""Services: a user's recommendations — the default blend (the `thaw` policy on the served model), or, inside a
running experiment, the user's arm, logged as an exposure under the list's rec_id; for a user the model cannot place
(no learned factors, no usable events), the most-interacted warm items, marked as a fallback."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services import experiments
from services.db import utcnow
from services.runtime import Runtime
from services.serving import Served, needs, read_request, serve, user_context
from thaw.errors import InvalidInputError
from thaw.experiments.assignment import seed_of
from thaw.experiments.policies import make_policy

FALLBACK = "popularity"  # the policy an unknown user is served


@dataclass
class Recommendation:
    rec_id: str
    user_id: str
    served: Served
    teams: list[str] | None = None  # interleaving: the arm that drafted each position
    experiment_id: str | None = None  # set when the list was served (and logged) for a running experiment
    arm: str | None = None
    fallback: str | None = None  # the policy served instead, for a user the model cannot place


def recommend(
    rt: Runtime,
    user_id: str,
    k: int,
    *,
    alpha: float | None = None,
    cold_only: bool = False,
    experiment_id: str | None = None,
    offset: int = 0,
    match: Mapping[str, str | int | bool] | None = None,
    exclude: Sequence[str] = (),
    explain: bool = False,
) -> Recommendation:
    """The list from position `offset` (the next page), of items whose payload matches `match`. Outside an
    experiment's time window an experiment's users get the default list, not logged; inside it the arm's list is
    logged as shown, so it has no pages (`offset` is refused). A user with neither learned factors nor events on
    indexed items gets the most-interacted warm items (`fallback`), in an experiment too, not logged. `exclude`d
    items are never served; with `explain` each served item carries its `Because`."""
    record = None
    if experiment_id is not None:
        with rt.session() as session:
            record = experiments.get(session, experiment_id)
            session.expunge(record)
        if alpha is not None:
            raise InvalidInputError("alpha is fixed by the experiment's arms: leave it out when experiment is given")
    running = record is not None and experiments.is_running(record, utcnow())
    if running and offset:
        raise InvalidInputError("offset pages the default list; an experiment's list is logged as served: leave it out")
    policies = (
        experiments.arm_policies(record, user_id) if record is not None and running else [make_policy("thaw", alpha)]
    )
    rec_id = uuid.uuid4().hex
    req = read_request(
        rt, user_id, cold_only=cold_only, seed=seed_of(rec_id), match=match, exclude=exclude, explain=explain
    )
    view = req.view(rt)
    extra = frozenset({"vector", *(["profile"] if explain else [])})
    contexts = {view.version: user_context(rt, view, req, extra | needs(policies, view.config.knn_weight))}
    unknown = contexts[view.version].vector is None  # the same for every arm: eligibility cannot differ by arm
    if unknown:
        policies = [make_policy(FALLBACK)]
    if record is None or not running or unknown:
        served = serve(rt, policies, k + offset, req, contexts)[0]
        if unknown:  # warm items only: a cold item has no popularity to show
            served = served.take([p for p, n in enumerate(served.interactions) if n > 0])
        served = served.take(slice(offset, offset + k))
        return Recommendation(rec_id, user_id, served, fallback=FALLBACK if unknown else None)
    served, teams, arm = experiments.serve_arm(rt, record, k, req, rec_id, contexts)
    return Recommendation(rec_id, user_id, served, teams, record.experiment_id, arm)
