"""Everything the service asks of Optuna: its RDB storage, samplers, pruners, ask and tell.

Each of our studies has one Optuna study, found by Optuna's study id (``hps_studies.
optuna_study_id``), never by its name: the name is for people. It is ``<our name>#<our id>``
(``digits-bn-clip#12``, see ``optuna_study_name``), so that ``optuna.load_study``, optuna-dashboard
and ``optuna studies`` show which study is which; renaming an Optuna study breaks nothing here.

No API process holds state that another would need: samplers and pruners are built from the
study's spec, and a random or TPE sampler is seeded with (seed, trial number), so a seeded study
samples the same values whichever process serves which trial. What a process keeps is only a
cache: Optuna's own cache of finished trials (finished trials never change; unfinished and new
ones are read again on every use, so trials written by other processes are seen), and, per
thread, the ``optuna.Study`` objects built from specs (a spec never changes once stored).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import threading
from collections import OrderedDict
from datetime import datetime
from functools import lru_cache
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import StudyDirection
from optuna.trial import TrialState as OptunaState
from sqlalchemy import text
from sqlalchemy.orm import Session

from service.db.session import connect_args
from service.studies.spec import Categorical, FloatRange, PrunerSpec, SamplerSpec, StudySpec

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger(__name__)


@lru_cache(maxsize=8)
def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for ``url`` (one per process and URL: it is a connection pool)."""
    kwargs: dict[str, Any] = {"connect_args": connect_args(url)}
    if not url.startswith("sqlite"):
        kwargs["pool_pre_ping"] = True
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


@lru_cache(maxsize=8)
def cached_storage(url: str) -> optuna.storages.BaseStorage:
    """``optuna_storage(url)`` behind the cache of finished trials that Optuna puts in front of
    every RDB storage a study opens (``get_storage``), kept for the life of the process instead
    of one request: a pruner or sampler then reads only unfinished and new trials from the
    database, not the whole study, on every report and ask."""
    return optuna.storages.get_storage(optuna_storage(url))


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """The search space as Optuna distributions."""
    out: dict[str, BaseDistribution] = {}
    for name, param in spec.space.items():
        if isinstance(param, Categorical):
            out[name] = CategoricalDistribution(param.choices)
        elif isinstance(param, FloatRange):
            out[name] = FloatDistribution(param.low, param.high, log=param.log, step=param.step)
        else:
            out[name] = IntDistribution(
                param.low, param.high, log=param.log, step=1 if param.log else param.step
            )
    return out


def _trial_seed(seed: int, number: int) -> int:
    digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class _SeededPerTrial(optuna.samplers.BaseSampler):
    """Delegates to a sampler made afresh for each trial, seeded with (study seed, trial number).

    Whichever API process serves trial k of a seeded study, it samples the same values: no
    sampler state needs to survive between requests.
    """

    def __init__(self, make: Any, seed: int) -> None:
        self._make, self._seed = make, seed
        self._inner: optuna.samplers.BaseSampler = make(seed)

    def before_trial(self, study: optuna.Study, trial: Any) -> None:
        self._inner = self._make(_trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return self._inner.sample_independent(study, trial, name, dist)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)


def build_sampler(spec: SamplerSpec) -> optuna.samplers.BaseSampler:
    """The study's sampler. Random and TPE are seeded per trial number when the study is."""
    if spec.type == "qmc":
        # QMC draws point k of one low-discrepancy sequence, seeded once for the study.
        return optuna.samplers.QMCSampler(
            qmc_type=spec.qmc_type, seed=spec.seed, warn_independent_sampling=False
        )
    if spec.type == "tpe":
        n_startup = spec.n_startup_trials

        def make(seed: int | None) -> optuna.samplers.BaseSampler:
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup)
    else:

        def make(seed: int | None) -> optuna.samplers.BaseSampler:
            return optuna.samplers.RandomSampler(seed=seed)

    return make(None) if spec.seed is None else _SeededPerTrial(make, spec.seed)


def build_pruner(spec: PrunerSpec, epochs: int) -> optuna.pruners.BasePruner:
    """The study's pruner."""
    if spec.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.n_startup_trials,
            n_warmup_steps=spec.n_warmup_steps,
            interval_steps=spec.interval_steps,
        )
    if spec.type == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=spec.min_resource,
            max_resource=epochs,
            reduction_factor=spec.reduction_factor,
        )
    if spec.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.min_resource, reduction_factor=spec.reduction_factor
        )
    return optuna.pruners.NopPruner()


def optuna_study_name(name: str, study_id: int) -> str:
    """The name of our study ``study_id`` in Optuna's storage: ``<name>#<id>``, e.g.
    ``digits-bn-clip#12``. Unique: our ids are, and a study name cannot hold ``#``."""
    return f"{name}#{study_id}"


def create_study(url: str, spec: StudySpec, uid: str) -> int:
    """Create the Optuna study that will hold this study's trials; its Optuna study id.

    It is named ``uid`` (``hpsearch-<hex>``, unique even among deleted studies) until
    ``name_study`` gives it its name in the transaction that records our study: our id is not
    known before. Its user attributes name our study for tools that read Optuna's storage.
    """
    storage = cached_storage(url)
    direction = (
        StudyDirection.MAXIMIZE
        if spec.objective.resolved_direction == "maximize"
        else StudyDirection.MINIMIZE
    )
    optuna_study_id = storage.create_new_study([direction], study_name=uid)
    try:
        storage.set_study_user_attr(optuna_study_id, "hpsearch_study", spec.name)
        storage.set_study_user_attr(optuna_study_id, "objective", spec.objective.metric)
    except BaseException:
        delete_study(url, optuna_study_id)  # all or nothing, like the study it is for
        raise
    return optuna_study_id


class OptunaNameTakenError(Exception):
    """Another Optuna study (one made outside this service) holds the name ours would get."""

    def __init__(self, name: str, holder: int) -> None:
        super().__init__(f"Optuna study {holder} in the same storage is already named {name!r}")
        self.name, self.holder = name, holder


def name_study(session: Session, optuna_study_id: int, name: str) -> None:
    """Rename the Optuna study, in ``session``'s transaction (so that the name changes with the
    row of ours it names, or not at all).

    Optuna has no call that renames a study: its ``studies.study_name`` column is the one thing
    of Optuna's written with SQL here. Optuna's cached storage may keep the name a study had;
    this module never reads that cache's names (``_load`` asks the database). Raises
    ``OptunaNameTakenError`` when another Optuna study in the storage holds ``name``.
    """
    holder = session.scalar(
        text("SELECT study_id FROM studies WHERE study_name = :name"), {"name": name}
    )
    if holder is not None and holder != optuna_study_id:
        raise OptunaNameTakenError(name, holder)
    session.execute(
        text("UPDATE studies SET study_name = :name WHERE study_id = :id"),
        {"name": name, "id": optuna_study_id},
    )


def _load(
    url: str,
    optuna_study_id: int,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """``optuna.load_study`` by Optuna's study id. Optuna finds a study by name only: its
    current name is read first, from the database (the cached storage would answer with the
    name the study had when this process first saw it). KeyError when the study is gone."""
    for _ in range(3):
        name = optuna_storage(url).get_study_name_from_id(optuna_study_id)
        try:
            return optuna.load_study(
                study_name=name, storage=cached_storage(url), sampler=sampler, pruner=pruner
            )
        except KeyError:  # renamed between the two reads: read its new name
            continue
    raise KeyError(f"Optuna study {optuna_study_id} keeps changing its name")


_STUDIES_PER_THREAD = 32
_local = threading.local()


def load_study(url: str, optuna_study_id: int, spec: StudySpec | None = None) -> optuna.Study:
    """The Optuna study, with this spec's sampler and pruner when it will ask or prune (reading
    and telling need neither).

    With a spec, the study object is kept per thread and reused: building it costs a query
    (and a sampler); the per-trial state of a seeded sampler must not be shared between threads.
    A kept study is reused only with the spec it was built for: on SQLite a deleted study's
    Optuna id is handed to the next one.
    """
    if spec is None:
        return _load(url, optuna_study_id)
    studies: OrderedDict[tuple[str, int], tuple[StudySpec, optuna.Study]] = (
        _local.__dict__.setdefault("studies", OrderedDict())
    )
    key = (url, optuna_study_id)
    kept = studies.get(key)
    if kept is None or (kept[0] is not spec and kept[0] != spec):
        study = _load(
            url,
            optuna_study_id,
            sampler=build_sampler(spec.sampler),
            pruner=build_pruner(spec.pruner, spec.n_epochs),
        )
        studies[key] = (spec, study)
        if len(studies) > _STUDIES_PER_THREAD:
            studies.popitem(last=False)
        return study
    studies.move_to_end(key)
    return kept[1]


def delete_study(url: str, optuna_study_id: int) -> None:
    """Remove the Optuna study and its trials (a no-op when it is already gone)."""
    with contextlib.suppress(KeyError):
        cached_storage(url).delete_study(optuna_study_id)


def ask(study: optuna.Study, spec: StudySpec) -> tuple[int, dict[str, Any]]:
    """A new trial with sampled values: (Optuna trial id, sampled params)."""
    trial = study.ask(fixed_distributions=distributions(spec))
    # Optuna keeps a trial's storage id private (its public number counts within a study); our
    # trial rows are keyed by it, unique across studies and what the storage's calls take.
    return trial._trial_id, dict(trial.params)


def report(
    url: str, optuna_study_id: int, spec: StudySpec, trial_id: int, epoch: int, value: float
) -> bool:
    """Record an epoch's objective and ask the pruner whether to stop.

    The pruner is asked as ``Trial.should_prune`` asks it, without building a ``Trial`` (that
    would run the sampler's per-trial set-up on every report), and it sees the study as read
    once here: the trials are fetched once per report, not once for this trial and again for
    its peers.
    """
    study, storage = load_study(url, optuna_study_id, spec), cached_storage(url)
    storage.set_trial_intermediate_value(trial_id, epoch, value)
    if isinstance(study.pruner, optuna.pruners.NopPruner):
        return False
    trials = storage.get_all_trials(optuna_study_id, deepcopy=False)
    this = next(t for t in trials if t._trial_id == trial_id)  # private: see ``ask``
    return bool(study.pruner.prune(_as_read(study, trials), this))


class _TrialsAsRead:
    """A storage that answers ``get_all_trials`` from trials already read, and everything else
    from the storage behind it."""

    def __init__(self, storage: optuna.storages.BaseStorage, trials: list[Any]) -> None:
        self._storage, self._trials = storage, trials

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list[Any]:
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


def _as_read(study: optuna.Study, trials: list[Any]) -> optuna.Study:
    # Private, and no public way to do it: a pruner reads its peers through the study's
    # storage, and this is what lets it read the trials fetched once instead of again.
    view = copy.copy(study)
    view._storage = _TrialsAsRead(study._storage, trials)  # type: ignore[assignment]
    return view


def tell(url: str, optuna_study_id: int, trial_id: int, state: str, value: float | None) -> None:
    """Finish the Optuna trial (idempotent: a finished trial is left as it is).

    ``complete`` with a value -> COMPLETE; ``pruned`` -> PRUNED with the last epoch's value (as
    ``study.tell`` stores a pruned trial); anything else (diverged, timed out, failed) -> FAIL,
    which samplers skip. Written with the storage's own call that ``study.tell`` ends with: the
    samplers built here (random, TPE, QMC, no constraints) do nothing after a trial, and
    ``study.tell`` would first read the whole trial back.
    """
    values: list[float] | None = None
    if state == "complete" and value is not None:
        optuna_state = OptunaState.COMPLETE
        values = [value]
    elif state == "pruned":
        optuna_state = OptunaState.PRUNED
        values = [value] if value is not None and math.isfinite(value) else None
    else:
        optuna_state = OptunaState.FAIL
    # Another process (a second API's reaper) may finish the same trial first; it wrote the
    # same state, read from the same row of ours.
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        cached_storage(url).set_trial_state_values(trial_id, optuna_state, values)


def running_trials(url: str, optuna_study_id: int) -> list[tuple[int, float, dict[str, Any]]]:
    """Optuna's running trials of a study: (trial id, seconds since it started, params)."""
    try:
        study = load_study(url, optuna_study_id)
        running = study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,))
    except KeyError:  # the study was deleted since the caller listed it: nothing is running
        return []
    now = datetime.now()  # Optuna stamps trials with naive local time
    return [
        (t._trial_id, (now - (t.datetime_start or now)).total_seconds(), dict(t.params))  # see ask
        for t in running
    ]


def param_importances(url: str, optuna_study_id: int) -> dict[str, float]:
    """Each searched parameter's importance (Optuna's PED-ANOVA); empty while it cannot be
    computed (a parameter that never varied, too few trials)."""
    study = load_study(url, optuna_study_id)
    try:
        result = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        )
    except (ValueError, RuntimeError) as exc:
        log.info("no parameter importance yet: %s", exc)
        return {}
    return {name: float(value) for name, value in result.items()}


# The error Optuna's storage raises when its database fails: the API answers it as an outage.
StorageInternalError = optuna.exceptions.StorageInternalError
