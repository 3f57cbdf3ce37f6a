"""What the API and the dashboard read of studies: summaries, the study list, trial pages, the
trial list and the CSV export, answered from a page cache while a study has not changed."""

from __future__ import annotations

import csv
import io
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpsearch.lifecycle import FINISHED_TRIAL_STATUSES, TrialStatus
from service.context import ServiceContext
from service.db.models import Study, Trial, TrialEpoch
from service.errors import NotFoundError
from service.studies.repository import spec_of

TRIAL_STATES = ("running", *FINISHED_TRIAL_STATUSES)


class _Pages:
    """The answers of the read paths, one per page (a study's summary, a trial, a page of the
    trial list), kept while their study has not changed: every change to a study's trials bumps
    its ``change_seq`` (what ``?after=N`` polling reads too), in the transaction that makes it,
    so the same page at the same ``(uid, change_seq)`` is the same answer. A crowd polling the
    dashboard then costs one small query a request, not three or four and the JSON they decode.
    Each API process keeps its own; the version is read from the database before the data, so
    a page is never older than its version. Answers are shared: never modify one."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._pages: OrderedDict[tuple[Any, ...], tuple[Any, dict[str, Any]]] = OrderedDict()

    def get(self, page: tuple[Any, ...], version: Any) -> dict[str, Any] | None:
        """The answer kept for ``page`` at ``version``, or None."""
        with self._lock:
            kept = self._pages.get(page)
            if kept is None or kept[0] != version:
                return None
            self._pages.move_to_end(page)
            return kept[1]

    def put(self, page: tuple[Any, ...], version: Any, answer: dict[str, Any]) -> None:
        """Keep ``answer`` for ``page`` at ``version`` (replacing any other version's)."""
        with self._lock:
            self._pages[page] = (version, answer)
            self._pages.move_to_end(page)
            while len(self._pages) > self._size:
                self._pages.popitem(last=False)


# Pages of every study together; an entry is a few kB to a list page's ~100 kB.
_PAGES = _Pages(256)


def _version(s: Session, study_id: int) -> tuple[str, int]:
    """``(uid, change_seq)`` of a study, read alone: what its trial pages depend on."""
    row = s.execute(select(Study.uid, Study.change_seq).where(Study.id == study_id)).first()
    if row is None:
        raise NotFoundError(f"no study with id {study_id}")
    return row.uid, row.change_seq


def study_row(s: Session, study_id: int) -> Study:
    study = s.get(Study, study_id)
    if study is None:
        raise NotFoundError(f"no study with id {study_id}")
    return study


def _summary(s: Session, study: Study) -> dict[str, Any]:
    # The row is read anyway: what the answer shows of it, and its trials' change_seq, say
    # whether the counts and the best trial need reading again.
    version = (
        study.uid,
        study.change_seq,
        study.status,
        study.status_reason,
        study.started_at,
        study.finished_at,
        study.n_trials,
    )
    page = ("study", study.id)
    cached = _PAGES.get(page, version)
    if cached is not None:
        return cached
    answer = _summarize(s, study)
    _PAGES.put(page, version, answer)
    return answer


def _summarize(s: Session, study: Study) -> dict[str, Any]:
    counts = {state: 0 for state in TRIAL_STATES}
    rows = s.execute(
        select(Trial.state, func.count()).where(Trial.study_id == study.id).group_by(Trial.state)
    )
    counts.update((state, count) for state, count in rows)
    finished = sum(counts[k] for k in FINISHED_TRIAL_STATUSES)
    spec = spec_of(study)
    order = Trial.value.desc() if spec.objective.resolved_direction == "maximize" else Trial.value
    best = s.scalars(
        select(Trial)
        .where(
            Trial.study_id == study.id,
            Trial.state == TrialStatus.COMPLETE,
            Trial.value.is_not(None),
        )
        .order_by(order, Trial.number)
        .limit(1)
    ).first()
    return {
        "id": study.id,
        "name": study.name,
        "status": study.status,
        "status_reason": study.status_reason,
        "n_trials": study.n_trials,
        "trial_counts": counts,
        "finished": finished,
        "progress": finished / study.n_trials,
        "searched": list(spec.space),
        "objective": {
            "metric": spec.objective.metric,
            "direction": spec.objective.resolved_direction,
        },
        "best_trial": None
        if best is None
        else {"number": best.number, "value": best.value, "params": best.params},
        "spec": study.spec,
        "created_at": study.created_at,
        "started_at": study.started_at,
        "finished_at": study.finished_at,
        "change_seq": study.change_seq,
    }


def get_study(ctx: ServiceContext, study_id: int) -> dict[str, Any]:
    """A study with its trial counts, progress and best trial."""
    with ctx.sessions() as s:
        return _summary(s, study_row(s, study_id))


def list_studies(ctx: ServiceContext, offset: int, limit: int) -> dict[str, Any]:
    """Studies, newest first."""
    with ctx.sessions() as s:
        count = s.scalar(select(func.count()).select_from(Study)) or 0
        studies = s.scalars(select(Study).order_by(Study.id.desc()).offset(offset).limit(limit))
        return {
            "data": [_summary(s, st) for st in studies],
            "count": count,
            "offset": offset,
            "limit": limit,
        }


def _trial_public(trial: Trial, epochs: list[TrialEpoch] | None = None) -> dict[str, Any]:
    duration = None
    if trial.finished_at is not None:
        duration = (trial.finished_at - trial.started_at).total_seconds()
    out: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state,
        "params": trial.params,
        "value": trial.value,
        "reason": trial.reason,
        "worker_id": trial.worker_id,
        "attempt": trial.attempt,
        "epochs_run": trial.epochs_run,
        "duration_seconds": duration,
        "train_seconds": trial.seconds,
        "started_at": trial.started_at,
        "finished_at": trial.finished_at,
        "parameters": (trial.result or {}).get("parameters"),
        "change_seq": trial.change_seq,
    }
    if epochs is not None:
        out["epochs"] = [
            {
                "epoch": e.epoch,
                "loss": e.loss,
                "accuracy": e.accuracy,
                "val_loss": e.val_loss,
                "val_accuracy": e.val_accuracy,
                "should_stop": e.should_stop,
                "stop_reason": e.stop_reason,
            }
            for e in epochs
        ]
    return out


def list_trials(
    ctx: ServiceContext,
    study_id: int,
    state: str | None,
    after: int | None,
    offset: int,
    limit: int,
    sort: str = "number",
    descending: bool = False,
) -> dict[str, Any]:
    """A page of a study's trials, sorted by ``sort`` (ties by number); with ``after``, only
    those changed since that change number (``cursor`` is the value to pass next time)."""
    page = ("trials", study_id, state, after, offset, limit, sort, descending)
    with ctx.sessions() as s:
        version = _version(s, study_id)
        cached = _PAGES.get(page, version)
        if cached is not None:
            return cached
        query = select(Trial).where(Trial.study_id == study_id)
        if state is not None:
            query = query.where(Trial.state == state)
        if after is not None:
            query = query.where(Trial.change_seq > after)
        count = s.scalar(select(func.count()).select_from(query.subquery())) or 0
        key: Any = {
            "number": Trial.number,
            "value": Trial.value,
            "epochs_run": Trial.epochs_run,
            "state": Trial.state,
            "duration": Trial.seconds,  # training time; wall time differs by start-up only
        }[sort]
        key = key.desc().nulls_last() if descending else key.asc().nulls_last()
        trials = s.scalars(query.order_by(key, Trial.number).offset(offset).limit(limit)).all()
        answer = {
            "data": [_trial_public(t) for t in trials],
            "count": count,
            "offset": offset,
            "limit": limit,
            "cursor": version[1],
        }
    _PAGES.put(page, version, answer)
    return answer


def get_trial(ctx: ServiceContext, study_id: int, number: int) -> dict[str, Any]:
    """One trial with the per-epoch metrics of its latest attempt, which of its params were
    searched and which the spec fixed, and how many epochs it was to train."""
    page = ("trial", study_id, number)
    with ctx.sessions() as s:
        version = _version(s, study_id)
        cached = _PAGES.get(page, version)
        if cached is not None:
            return cached
        spec = spec_of(study_row(s, study_id))
        trial = s.scalars(
            select(Trial).where(Trial.study_id == study_id, Trial.number == number)
        ).first()
        if trial is None:
            raise NotFoundError(f"study {study_id} has no trial number {number}")
        epochs = s.scalars(
            select(TrialEpoch)
            .where(TrialEpoch.trial_id == trial.id, TrialEpoch.attempt == trial.attempt)
            .order_by(TrialEpoch.epoch)
        ).all()
        # A trial's params merge the spec's fixed values and the sampled ones; only the spec
        # tells them apart (the default search space included, when the spec names none).
        answer = {
            **_trial_public(trial, list(epochs)),
            "searched": list(spec.space),
            "fixed": [name for name in spec.fixed_params if name not in spec.space],
            "epochs_planned": spec.n_epochs,
        }
    _PAGES.put(page, version, answer)
    return answer


def trials_csv(ctx: ServiceContext, study_id: int) -> Iterator[str]:
    """The study's trials as CSV, one row per trial, one column per parameter."""
    with ctx.sessions() as s:
        study = study_row(s, study_id)
        spec = spec_of(study)
        trials = s.scalars(
            select(Trial).where(Trial.study_id == study_id).order_by(Trial.number)
        ).all()
    # Loaded (or refused with 404) here, before the response starts; only the rows stream.
    return _csv_rows(spec, trials)


def _csv_rows(spec: Any, trials: Sequence[Trial]) -> Iterator[str]:
    names = sorted({*spec.space, *spec.fixed_params})
    head = [
        "number",
        "state",
        spec.objective.metric,
        *names,
        "epochs_run",
        "duration_seconds",
        "worker_id",
        "attempt",
        "reason",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(head)
    for t in trials:
        public = _trial_public(t)
        writer.writerow(
            [
                t.number,
                t.state,
                "" if t.value is None else repr(t.value),
                *(_cell(t.params.get(n)) for n in names),
                t.epochs_run,
                public["duration_seconds"] or "",
                t.worker_id or "",
                t.attempt,
                t.reason or "",
            ]
        )
    yield buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)
