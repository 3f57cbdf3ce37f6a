"""A trial trains for real, reports every epoch, and ends in the state the issue describes."""

import statistics
import time
from collections.abc import Mapping

import pytest

from hpsearch.datasets import DatasetSpec
from hpsearch.params import TrainingSettings, validate_params
from hpsearch.results import TrialState
from tests.trainer.notes import NOTES_MODEL
from trainer.data import load_dataset
from trainer.training import run_trial

# Timing-bound or exclusive: run alone, after the parallel pass (pyproject.toml's markers).
pytestmark = pytest.mark.serial


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DatasetSpec(name="digits"))


class Recorder:
    """Records what the trainer reports; asks to stop at ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []
        self.stop_at = stop_at

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        self.calls.append((epoch, dict(metrics)))
        return epoch == self.stop_at


def test_sane_parameters_reach_95_percent_on_digits_within_10_epochs(digits) -> None:
    params = validate_params(
        {"optimizer": "adam", "learning_rate": 0.003, "hidden_units": [128], "batch_size": 32}
    )
    result = run_trial(params, digits, TrainingSettings(epochs=10, seed=0))
    assert result.state is TrialState.COMPLETE
    assert result.epochs_run == 10
    assert result.best_value >= 0.95


def test_notes_bn_model_reaches_90_percent_on_mnist_5k_within_10_epochs() -> None:
    data = load_dataset(DatasetSpec(name="mnist_5k"))
    assert data.input_shape == (28, 28, 1)
    bests = [
        run_trial(
            validate_params(NOTES_MODEL), data, TrainingSettings(epochs=10, seed=seed)
        ).best_value
        for seed in (0, 1, 2)
    ]
    assert statistics.median(bests) >= 0.90, bests
    assert min(bests) >= 0.88, bests


def test_every_epoch_is_reported_with_the_four_metrics(digits) -> None:
    recorder = Recorder()
    result = run_trial(
        validate_params({"learning_rate": 0.05, "hidden_units": [32]}),
        digits,
        TrainingSettings(epochs=3, seed=0),
        recorder,
    )
    assert [epoch for epoch, _ in recorder.calls] == [1, 2, 3]
    for _, metrics in recorder.calls:
        assert set(metrics) == {"loss", "accuracy", "val_loss", "val_accuracy"}
        assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert [m.val_accuracy for m in result.epochs] == [m["val_accuracy"] for _, m in recorder.calls]
    assert result.final_value == result.epochs[-1].val_accuracy
    assert result.best_value == max(m.val_accuracy for m in result.epochs)
    assert result.parameters.total == result.parameters.trainable + result.parameters.non_trainable
    assert result.seconds > 0


def test_minimized_objective_picks_the_lowest_value(digits) -> None:
    result = run_trial(
        validate_params({"learning_rate": 0.05, "hidden_units": [32]}),
        digits,
        TrainingSettings(epochs=3, objective="val_loss", direction="minimize"),
    )
    assert result.objective == "val_loss"
    assert result.best_value == min(m.val_loss for m in result.epochs)


def test_trial_stops_after_the_epoch_the_reporter_prunes(digits) -> None:
    recorder = Recorder(stop_at=2)
    result = run_trial(
        validate_params({"learning_rate": 0.05, "hidden_units": [32]}),
        digits,
        TrainingSettings(epochs=6, seed=0),
        recorder,
    )
    assert result.state is TrialState.PRUNED
    assert result.reason == "pruned at epoch 2"
    assert result.epochs_run == 2
    assert len(recorder.calls) == 2


@pytest.mark.parametrize(
    "params",
    [
        {"learning_rate": 10.0},  # the default ReLU MLP: the loss explodes (finite, huge)
        {**NOTES_MODEL, "learning_rate": 10.0},
    ],  # the notes' ELU model: the loss becomes NaN
)
def test_learning_rate_10_without_clipping_ends_diverged(digits, params) -> None:
    recorder = Recorder()
    result = run_trial(
        validate_params(params), digits, TrainingSettings(epochs=5, seed=1), recorder
    )
    assert result.state is TrialState.DIVERGED
    assert result.reason.startswith("diverged: loss")
    assert "epoch 1" in result.reason
    assert result.best_value is None
    assert recorder.calls == []  # nothing non-finite is ever reported


def test_divergence_factor_is_a_setting(digits) -> None:
    result = run_trial(
        validate_params({"learning_rate": 10.0, "activation": "tanh"}),
        digits,
        TrainingSettings(epochs=2, seed=1, divergence_factor=2.0),
    )
    assert result.state is TrialState.DIVERGED


def test_wall_clock_limit_ends_the_trial_as_timed_out(digits) -> None:
    result = run_trial(
        validate_params({"learning_rate": 0.05, "batch_size": 1}),
        digits,
        TrainingSettings(epochs=50, timeout_seconds=1.0),
    )
    assert result.state is TrialState.TIMED_OUT
    assert "exceeded the 1 s limit" in result.reason
    assert result.epochs_run < 50
    assert result.seconds < 10


def test_a_limit_that_runs_out_before_training_starts_still_ends_the_trial(digits) -> None:
    """The limit passed while the model was built (here at once): Keras's fit clears its stop
    flag as it starts, and the trial used to train all 50 epochs of one example a batch (211 s
    in CI, where building after the other tests took over the 1 s limit)."""
    started = time.perf_counter()
    result = run_trial(
        validate_params({"learning_rate": 0.05, "batch_size": 1}),
        digits,
        TrainingSettings(epochs=50, timeout_seconds=0.001),
    )
    assert result.state is TrialState.TIMED_OUT
    assert result.reason == "timed out: exceeded the 0.001 s limit during epoch 1"
    assert result.epochs_run == 0
    assert time.perf_counter() - started < 20


def test_an_error_during_training_ends_the_trial_failed_without_raising(digits) -> None:
    class Broken:
        def report(self, epoch, metrics):
            raise ConnectionError("service unreachable")

    result = run_trial(
        validate_params({"hidden_units": [8]}), digits, TrainingSettings(epochs=3), Broken()
    )
    assert result.state is TrialState.FAILED
    assert "ConnectionError: service unreachable" in result.reason


def test_same_parameters_and_seed_give_the_same_metrics(digits) -> None:
    params = validate_params(
        {"learning_rate": 0.05, "dropout": 0.3, "batch_norm": "before", "hidden_units": [64, 32]}
    )
    first, second = (
        run_trial(params, digits, TrainingSettings(epochs=3, seed=7)) for _ in range(2)
    )
    other_seed = run_trial(params, digits, TrainingSettings(epochs=3, seed=8))
    for a, b in zip(first.epochs, second.epochs, strict=True):
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a.value(metric) == pytest.approx(b.value(metric), abs=1e-6)
    assert [m.loss for m in other_seed.epochs] != [m.loss for m in first.epochs]


def test_cnn_trains_on_image_data(digits) -> None:
    params = validate_params(
        {
            "architecture": "cnn",
            "conv_filters": [8],
            "hidden_units": [32],
            "batch_norm": "before",
            "optimizer": "adam",
            "learning_rate": 0.01,
        }
    )
    result = run_trial(params, digits, TrainingSettings(epochs=3))
    assert result.state is TrialState.COMPLETE
    assert result.best_value > 0.8
