"""Aggregated study data for the dashboard's plots: one columnar answer instead of thousands of
trial objects, with learning curves capped, so a 10,000-trial study stays quick to draw."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import optuna
from sqlalchemy import select

from service import optuna_bridge
from service.context import ServiceContext
from service.db.models import Study, Trial, TrialEpoch
from service.errors import NotFoundError
from service.scheduling import spec_of
from service.spec import Categorical

log = logging.getLogger(__name__)

# Learning curves beyond this many would only draw a solid block: the best trials and the
# newest ones are kept.
MAX_CURVES = 300
MIN_TRIALS_FOR_IMPORTANCE = 5


def study_analysis(ctx: ServiceContext, study_id: int) -> dict[str, Any]:
    """Columns of every trial (number, state, value, searched params, epochs run) and the
    per-epoch objective of at most ``MAX_CURVES`` trials."""
    with ctx.sessions() as s:
        study = s.get(Study, study_id)
        if study is None:
            raise NotFoundError(f"no study with id {study_id}")
        spec = spec_of(study)
        rows = s.execute(
            select(
                Trial.id,
                Trial.number,
                Trial.state,
                Trial.value,
                Trial.params,
                Trial.epochs_run,
                Trial.attempt,
            )
            .where(Trial.study_id == study_id)
            .order_by(Trial.number)
        ).all()
        metric = spec.objective.metric
        maximize = spec.objective.resolved_direction == "maximize"
        scored = sorted(
            (r for r in rows if r.value is not None),
            key=lambda r: -r.value if maximize else r.value,
        )
        keep = {r.id for r in scored[: MAX_CURVES // 3]}
        for r in reversed(rows):
            if len(keep) >= MAX_CURVES:
                break
            keep.add(r.id)
        attempt = {r.id: r.attempt for r in rows}
        column = getattr(TrialEpoch, metric)
        curves: dict[int, list[float]] = {}
        for trial_id, att, _epoch, value in s.execute(
            select(TrialEpoch.trial_id, TrialEpoch.attempt, TrialEpoch.epoch, column)
            .where(TrialEpoch.trial_id.in_(keep))
            .order_by(TrialEpoch.trial_id, TrialEpoch.epoch)
        ):
            if att == attempt[trial_id]:
                curves.setdefault(trial_id, []).append(float(value))
    searched = []
    for name, param in spec.space.items():
        entry: dict[str, Any] = {"name": name, "type": param.type}
        if isinstance(param, Categorical):
            entry["choices"] = param.choices
        else:
            entry.update(low=param.low, high=param.high, log=param.log)
        searched.append(entry)
    numbers = {r.id: r.number for r in rows}
    states = {r.id: r.state for r in rows}
    return {
        "objective": {"metric": metric, "direction": spec.objective.resolved_direction},
        "epochs": spec.n_epochs,
        "searched": searched,
        "trials": {
            "number": [r.number for r in rows],
            "state": [r.state for r in rows],
            "value": [r.value for r in rows],
            "epochs_run": [r.epochs_run for r in rows],
            "params": {p["name"]: [r.params.get(p["name"]) for r in rows] for p in searched},
        },
        "curves": [
            {"number": numbers[t], "state": states[t], "values": v}
            for t, v in sorted(curves.items(), key=lambda kv: numbers[kv[0]])
        ],
        "curves_total": len(rows),
    }


def param_importance(ctx: ServiceContext, study_id: int) -> dict[str, Any]:
    """Each searched parameter's importance for the objective (Optuna's PED-ANOVA evaluator),
    once enough trials completed; cached per number of completed trials."""
    with ctx.sessions() as s:
        study = s.get(Study, study_id)
        if study is None:
            raise NotFoundError(f"no study with id {study_id}")
        complete = len(
            s.scalars(
                select(Trial.id).where(Trial.study_id == study_id, Trial.state == "complete")
            ).all()
        )
        optuna_name = study.optuna_name
        searched = len(spec_of(study).space)
    if complete < MIN_TRIALS_FOR_IMPORTANCE or searched < 1:
        return {
            "ready": False,
            "complete": complete,
            "needed": MIN_TRIALS_FOR_IMPORTANCE,
            "importances": {},
        }
    return {
        "ready": True,
        "complete": complete,
        "needed": MIN_TRIALS_FOR_IMPORTANCE,
        "importances": _importances(ctx.url, optuna_name, complete),
    }


@lru_cache(maxsize=64)
def _importances(url: str, optuna_name: str, complete: int) -> dict[str, float]:
    study = optuna.load_study(study_name=optuna_name, storage=optuna_bridge.optuna_storage(url))
    try:
        result = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        )
    except (ValueError, RuntimeError) as exc:  # e.g. a parameter that never varied
        log.info("no parameter importance yet: %s", exc)
        return {}
    return {name: float(value) for name, value in result.items()}
