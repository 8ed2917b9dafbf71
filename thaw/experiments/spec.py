"""Experiments: an experiment's definition — arms (a policy and a traffic share each), the control arm, the salt
of its assignment — validated once, shared by the API, the database records and the replay."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thaw.experiments.assignment import SHARE_TOLERANCE, assign
from thaw.experiments.policies import Policy, make_policy
from thaw.schema import InvalidIdError, check_id

KINDS = ("ab", "interleaving")


@dataclass(frozen=True)
class Arm:
    name: str
    policy: Policy
    share: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "share": self.share, **self.policy.as_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Arm:
        return cls(str(d["name"]), make_policy(d["policy"], d.get("alpha"), d.get("model_version")), float(d["share"]))


@dataclass(frozen=True)
class ExperimentSpec:
    """`ab`: every user is assigned to one arm by a salted hash of their id, in proportion to the shares.
    `interleaving`: exactly two arms; every user gets one team-draft interleaved list of both (shares unused)."""

    arms: tuple[Arm, ...]
    control: str
    salt: str
    kind: str = "ab"

    def __post_init__(self) -> None:
        problems = spec_problems(self.kind, self.arms, self.control)
        if problems:
            raise ValueError("; ".join(problems))

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.arms]

    @property
    def treatments(self) -> list[str]:
        return [a.name for a in self.arms if a.name != self.control]

    def assign(self, user_id: str) -> Arm:
        if self.kind != "ab":
            raise ValueError(f"a {self.kind} experiment does not split users between arms")
        return self.arm(assign(user_id, self.salt, [(a.name, a.share) for a in self.arms]))

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "control": self.control, "arms": [a.as_dict() for a in self.arms]}


def spec_problems(kind: str, arms: Sequence[Arm], control: str) -> list[str]:
    """Everything wrong with a definition, each saying what was expected and what arrived (empty: valid)."""
    problems = []
    names = [a.name for a in arms]
    if kind not in KINDS:
        problems.append(f"kind must be one of {KINDS}, got {kind!r}")
    for name in names:
        try:
            check_id(name, "arm name")
        except InvalidIdError as exc:
            problems.append(str(exc))
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"arm names must be unique; repeated: {dupes}")
    if control not in names:
        problems.append(f"control must name one of the arms {names}, got {control!r}")
    if kind == "interleaving" and len(arms) != 2:
        problems.append(f"an interleaving experiment has exactly 2 arms, got {len(arms)}")
    if kind == "ab":
        if len(arms) < 2:
            problems.append(f"an A/B experiment needs at least 2 arms, got {len(arms)}")
        total = sum(a.share for a in arms)
        if any(not 0.0 < a.share <= 1.0 for a in arms):
            problems.append(f"every arm's share must be in (0, 1]; got {[a.share for a in arms]}")
        elif abs(total - 1.0) > SHARE_TOLERANCE:
            problems.append(f"arm shares must sum to 1 (within {SHARE_TOLERANCE}); got {total:.6f}")
    return problems


def parse_arms(
    text: str, *, control: str | None = None, shares: str | None = None, salt: str = "replay", kind: str = "ab"
) -> ExperimentSpec:
    """Arms from the command line: comma-separated `[NAME=]POLICY[:alpha=A]`, e.g. `thaw,cf_only,t50=thaw:alpha=0.5`;
    equal shares unless `shares` gives them (comma-separated); the control defaults to the first arm."""
    arms = []
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    weights = [float(s) for s in shares.split(",")] if shares else [1.0 / len(tokens)] * len(tokens)
    if len(weights) != len(tokens):
        raise ValueError(f"{len(tokens)} arms but {len(weights)} shares")
    for token, share in zip(tokens, weights, strict=True):
        head, _, params = token.partition(":")
        name, _, policy = head.rpartition("=")
        alpha = None
        for param in filter(None, params.split(";")):
            key, _, value = param.partition("=")
            if key != "alpha":
                raise ValueError(f"arm {token!r}: the only parameter is alpha=A, got {param!r}")
            alpha = float(value)
        arms.append(Arm(name or policy, make_policy(policy, alpha), share))
    return ExperimentSpec(tuple(arms), control or arms[0].name, salt, kind)
