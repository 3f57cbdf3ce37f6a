"""One trial: build the model, train it epoch by epoch, report, stop when told, summarize."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from hpsearch.params import TrainingSettings, TrialParams
from hpsearch.results import EpochMetrics, ParameterCounts, TrialResult, TrialState
from trainer.data import Dataset
from trainer.reporting import NeverStop, Reporter

log = logging.getLogger(__name__)


def configure_threads(intra_op: int | None, inter_op: int | None) -> None:
    """Bound TensorFlow's thread pools so that several workers can share one machine.

    Must run before TensorFlow executes its first operation in this process; later calls fail
    with ``RuntimeError``. ``None`` or 0 leaves TensorFlow's default (all cores).
    """
    if intra_op:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(intra_op)
    if inter_op:
        os.environ["TF_NUM_INTEROP_THREADS"] = str(inter_op)
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def run_trial(
    params: TrialParams,
    data: Dataset,
    settings: TrainingSettings,
    reporter: Reporter | None = None,
) -> TrialResult:
    """Train one configuration for ``settings.epochs`` epochs and return how it ended.

    Invalid combinations (a CNN on tabular data) raise ``InvalidSpecError`` before training.
    Errors during training never escape: the trial ends ``failed`` with the error's text. A
    non-finite loss ends it ``diverged`` at once, the wall-clock limit ``timed_out``, and a
    reporter answering ``True`` ``pruned`` after that epoch.
    """
    import keras
    import tensorflow as tf

    from trainer.model import build_compiled_model

    started = time.perf_counter()
    keras.utils.clear_session(free_memory=True)
    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()
    model = build_compiled_model(params, data.input_shape, data.n_classes)
    counts = _count_parameters(model)
    monitor = _Monitor(settings, reporter or NeverStop(), started)
    timer = None
    if settings.timeout_seconds is not None:
        remaining = settings.timeout_seconds - (time.perf_counter() - started)
        timer = threading.Timer(max(remaining, 0.0), monitor.time_out)
        timer.daemon = True
        timer.start()
    try:
        model.fit(
            data.x_train,
            data.y_train,
            batch_size=params.batch_size,
            epochs=settings.epochs,
            validation_data=(data.x_val, data.y_val),
            shuffle=True,
            verbose=0,
            callbacks=[monitor],
        )
    except Exception as exc:  # a failed trial is recorded; the search goes on
        log.exception("trial failed during training")
        monitor.fail(f"{type(exc).__name__}: {exc}")
    finally:
        if timer is not None:
            timer.cancel()
    return monitor.result(counts, time.perf_counter() - started)


def _count_parameters(model: Any) -> ParameterCounts:
    import numpy as np

    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return ParameterCounts(
        total=trainable + non_trainable, trainable=trainable, non_trainable=non_trainable
    )


def _monitor_base() -> type:
    import keras

    return keras.callbacks.Callback  # type: ignore[no-any-return]


class _Monitor(_monitor_base()):  # type: ignore[misc]
    """The Keras callback that reports epochs and decides how the trial ends."""

    def __init__(self, settings: TrainingSettings, reporter: Reporter, started: float) -> None:
        super().__init__()
        self._settings = settings
        self._reporter = reporter
        self._epoch_started = started
        self.epochs: list[EpochMetrics] = []
        self.state = TrialState.COMPLETE
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._first_loss: float | None = None

    def _end(self, state: TrialState, reason: str) -> None:
        with self._lock:
            if self.state is TrialState.COMPLETE:  # the first reason to stop wins
                self.state, self.reason = state, reason
        if self.model is not None:
            self.model.stop_training = True

    def time_out(self) -> None:
        limit = self._settings.timeout_seconds
        self._end(
            TrialState.TIMED_OUT,
            f"timed out: exceeded the {limit:g} s limit during epoch {len(self.epochs) + 1}",
        )

    def fail(self, reason: str) -> None:
        self._end(TrialState.FAILED, reason)

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._stop_if_ended()

    def _stop_if_ended(self) -> bool:
        """Keep a stop decided before ``fit`` began: ``fit`` clears ``stop_training`` at its
        start, so a time limit that ran out while the model was built and traced (the timer's
        thread) was forgotten, and the trial trained all its epochs."""
        if self.state is TrialState.COMPLETE:
            return False
        if self.model is not None:
            self.model.stop_training = True
        return True

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._stop_if_ended():
            return
        # Keras computes cross-entropy from the softmax's logits, so an exploding network shows
        # a huge but finite loss long before (or instead of) NaN: both count as divergence.
        loss = float((logs or {}).get("loss", 0.0))
        if self._first_loss is None:
            self._first_loss = loss
        where = f"at epoch {len(self.epochs) + 1}, batch {batch + 1}"
        if not math.isfinite(loss):
            self._end(TrialState.DIVERGED, f"diverged: loss became {loss} {where}")
        elif loss > self._settings.divergence_factor * max(abs(self._first_loss), 1.0):
            self._end(
                TrialState.DIVERGED,
                f"diverged: loss reached {loss:.3g}, over {self._settings.divergence_factor:g}x "
                f"the first batch's {self._first_loss:.3g}, {where}",
            )

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.state is not TrialState.COMPLETE:  # a cut-short epoch is not reported
            return
        logs = dict(logs or {})
        values = {
            k: float(logs.get(k, math.nan))
            for k in ("loss", "accuracy", "val_loss", "val_accuracy")
        }
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            self._end(
                TrialState.DIVERGED,
                f"diverged: {bad[0]} became {values[bad[0]]} at epoch {epoch + 1}",
            )
            return
        metrics = EpochMetrics(
            epoch=epoch + 1, seconds=time.perf_counter() - self._epoch_started, **values
        )
        self.epochs.append(metrics)
        if self._reporter.report(epoch + 1, values):
            self._end(TrialState.PRUNED, f"pruned at epoch {epoch + 1}")

    def result(self, counts: ParameterCounts, seconds: float) -> TrialResult:
        objective = self._settings.objective
        values = [m.value(objective) for m in self.epochs]
        pick = max if self._settings.direction == "maximize" else min
        return TrialResult(
            state=self.state,
            reason=self.reason,
            objective=objective,
            direction=self._settings.direction,
            epochs=self.epochs,
            epochs_run=len(self.epochs),
            best_value=pick(values) if values else None,
            final_value=values[-1] if values else None,
            seconds=seconds,
            parameters=counts,
        )
