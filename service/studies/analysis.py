"""Aggregated study data for the dashboard's plots: one columnar answer instead of thousands of
trial objects, with learning curves capped, so a 10,000-trial study stays quick to draw."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import func, select

from hpsearch.lifecycle import TrialStatus
from service import optuna_bridge
from service.context import ServiceContext
from service.db.models import Study, Trial, TrialEpoch
from service.errors import NotFoundError
from service.studies.repository import spec_of
from service.studies.spec import Categorical

log = logging.getLogger(__name__)
T = TypeVar("T")

# Learning curves beyond this many would only draw a solid block: the best trials and the
# newest ones are kept.
MAX_CURVES = 300
MIN_TRIALS_FOR_IMPORTANCE = 5
IMPORTANCE_TIMEOUT = 300.0


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
        complete = (
            s.scalar(
                select(func.count()).where(
                    Trial.study_id == study_id, Trial.state == TrialStatus.COMPLETE
                )
            )
            or 0
        )
        uid, optuna_study_id = study.uid, study.optuna_study_id
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
        "importances": _importances(ctx.url, uid, optuna_study_id, complete),
    }


class _Analyst:
    """One process of its own, started on first use, that computes parameter importance.

    Importing Optuna's evaluators takes seconds where scikit-learn is installed (it pulls in scipy
    and pandas), and the first read of a 10,000-trial study from storage takes seconds more; in
    its own process that work never holds the API's GIL, so workers' reports and the page's other
    requests stay quick meanwhile. The process keeps Optuna's trial cache between calls."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._retired: ProcessPoolExecutor | None = None  # shut down on purpose: no retry

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        for attempt in (1, 2):
            with self._lock:
                if self._pool is None:
                    context = multiprocessing.get_context("spawn")
                    self._pool = ProcessPoolExecutor(
                        max_workers=1, mp_context=context, initializer=_exit_with_parent
                    )
                pool = self._pool
            try:
                return pool.submit(fn, *args).result(IMPORTANCE_TIMEOUT)
            except BrokenProcessPool:  # the process died (e.g. killed): start a new one, once
                if pool is self._retired:
                    raise RuntimeError("parameter importance: the API is shutting down") from None
                log.warning("importance process lost", extra={"attempt": attempt})
                with self._lock:
                    if self._pool is pool:
                        self._pool = None
        raise RuntimeError("parameter importance: the importance process died twice")

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._retired = pool
        if pool is not None:
            # A computation may be under way: end the process rather than wait for it (Python
            # 3.14's terminate_workers() does this; before it, only through _processes).
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
            pool.shutdown(wait=True, cancel_futures=True)


_analyst = _Analyst()


def shutdown() -> None:
    """Stop the importance process, if it was started (the API's shutdown)."""
    _analyst.shutdown()


@lru_cache(maxsize=64)
def _importances(url: str, uid: str, optuna_study_id: int, complete: int) -> dict[str, float]:
    # Keyed by the uid too: on SQLite a deleted study's Optuna id is handed to the next one.
    return _analyst.run(_compute_importances, url, uid, optuna_study_id)


def _exit_with_parent() -> None:
    """In the importance process: exit as soon as the API process is gone, however it ended."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


# In the importance process: the study each Optuna id last belonged to.
_uid_of_optuna_id: dict[tuple[str, int], str] = {}


def _compute_importances(url: str, uid: str, optuna_study_id: int) -> dict[str, float]:
    """Runs in the importance process."""
    if _uid_of_optuna_id.setdefault((url, optuna_study_id), uid) != uid:
        # The id now belongs to another study (SQLite reuses a deleted study's id): the cached
        # storage still holds the deleted study's finished trials under it, so start afresh.
        optuna_bridge.cached_storage.cache_clear()
        _uid_of_optuna_id[(url, optuna_study_id)] = uid
    return optuna_bridge.param_importances(url, optuna_study_id)
