"""API: experiments — define one (POST /experiments), describe it, and report it (JSON and a PNG chart)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from api.deps import RuntimeDep, SessionDep, require_model
from api.schemas import ExperimentCreate, ExperimentPublic
from services import experiments, reports
from services.db import Experiment, as_utc, utcnow
from thaw.experiments.policies import make_policy
from thaw.experiments.report import chart_png
from thaw.experiments.spec import Arm, ExperimentSpec

router = APIRouter(tags=["experiments"], dependencies=[Depends(require_model)])


def _public(record: Experiment) -> ExperimentPublic:
    return ExperimentPublic(
        experiment_id=record.experiment_id,
        name=record.name,
        kind=record.kind,
        control=record.control,
        salt=record.salt,
        arms=record.arms,
        start_at=as_utc(record.start_at),
        end_at=as_utc(record.end_at) if record.end_at else None,
        created_at=as_utc(record.created_at),
        status=experiments.status(record, utcnow()),
    )


@router.post("/experiments", response_model=ExperimentPublic, status_code=201)
def create_experiment(body: ExperimentCreate, rt: RuntimeDep) -> ExperimentPublic:
    arms = tuple(Arm(a.name, make_policy(a.policy, a.alpha, a.model_version), a.share or 0.5) for a in body.arms)
    spec = ExperimentSpec(arms, body.control, body.salt or "", body.kind)
    return _public(experiments.create(rt, body.name, spec, body.start_at, body.end_at))


@router.get("/experiments", response_model=list[ExperimentPublic])
def list_experiments(session: SessionDep) -> list[ExperimentPublic]:
    return [_public(r) for r in experiments.listed(session)]


@router.get("/experiments/{experiment_id}", response_model=ExperimentPublic)
def get_experiment(experiment_id: str, session: SessionDep) -> ExperimentPublic:
    return _public(experiments.get(session, experiment_id))


@router.post("/experiments/{experiment_id}/stop", response_model=ExperimentPublic)
def stop_experiment(experiment_id: str, rt: RuntimeDep) -> ExperimentPublic:
    """End the experiment now (its status becomes "ended"; its report keeps what was served)."""
    return _public(experiments.stop(rt, experiment_id))


def _report(rt: RuntimeDep, experiment_id: str) -> dict[str, Any]:
    record, report = reports.report(rt, experiment_id)
    report["experiment"] = {**_public(record).model_dump(mode="json"), **report["experiment"]}
    return report


@router.get("/experiments/{experiment_id}/report")
def get_report(experiment_id: str, rt: RuntimeDep) -> dict[str, Any]:
    return _report(rt, experiment_id)


@router.get("/experiments/{experiment_id}/report.png", response_class=Response)
def get_chart(experiment_id: str, rt: RuntimeDep) -> Response:
    report = _report(rt, experiment_id)
    png = chart_png(report, f"experiment {report['experiment']['name']} ({experiment_id})")
    return Response(png, media_type="image/png")
