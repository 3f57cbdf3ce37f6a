"""Trials run in a recycled child process: memory stays bounded, and nothing that goes wrong in
one trial (its limit, its process dying or found dead) stops the next. Each child really starts
(and imports TensorFlow), so these tests are few."""

import os
import signal
import threading
from collections.abc import Mapping

import pytest

from hpsearch.datasets import DatasetSpec
from hpsearch.errors import InvalidSpecError
from hpsearch.params import TrainingSettings
from hpsearch.results import TrialState
from trainer.executor import TrialExecutor, TrialProcessDiedError

DATA = DatasetSpec(name="synthetic", n_samples=300, n_features=8, n_informative=4, n_classes=3)
PARAMS = {"learning_rate": 0.05, "hidden_units": [16]}


@pytest.fixture(scope="module")
def executor():
    with TrialExecutor(recycle_after=4, intra_op_threads=1, inter_op_threads=1) as ex:
        yield ex


def test_children_are_recycled_every_k_trials_and_memory_stays_bounded(executor) -> None:
    pids, rss = [], []
    for i in range(9):
        result = executor.run(PARAMS, DATA, TrainingSettings(epochs=1, seed=i))
        assert result.state is TrialState.COMPLETE
        pids.append(executor._current.pid if executor._current.trials else None)
        rss.append(executor.stats.last_child_rss)
    # 9 trials with K=4: trials 1-4, 5-8 and 9 ran in three different children.
    assert executor.stats.children_started >= 3
    assert executor.stats.children_retired >= 2
    # No trial process grew past the first one's size by more than a few MB per trial held.
    assert max(rss) < rss[0] + 4 * 20 * 2**20


def test_parent_process_does_not_import_tensorflow_for_the_executor() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import trainer.executor; "
        "print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_reporter_in_the_parent_prunes_the_trial_in_the_child(executor) -> None:
    seen: list[int] = []

    class StopAtTwo:
        def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
            seen.append(epoch)
            return epoch == 2

    result = executor.run(PARAMS, DATA, TrainingSettings(epochs=5), StopAtTwo())
    assert result.state is TrialState.PRUNED
    assert result.epochs_run == 2 and seen == [1, 2]


def test_invalid_parameters_raise_before_training(executor) -> None:
    with pytest.raises(InvalidSpecError) as info:
        executor.run({"learning_rate": -1}, DATA, TrainingSettings(epochs=1))
    assert info.value.errors[0].field == "learning_rate"
    # The child is still serving.
    assert executor.run(PARAMS, DATA, TrainingSettings(epochs=1)).state is TrialState.COMPLETE


def test_a_killed_child_raises_process_died_and_the_next_trial_runs(executor) -> None:
    class KillDuringEpochTwo:
        def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
            if epoch == 1:
                pid = executor._current.pid
                threading.Timer(0.05, os.kill, (pid, signal.SIGKILL)).start()
            return False

    with pytest.raises(TrialProcessDiedError) as died:
        executor.run(
            {**PARAMS, "batch_size": 1}, DATA, TrainingSettings(epochs=50), KillDuringEpochTwo()
        )
    assert died.value.reason == "the trial process died (killed: SIGKILL) during epoch 2"
    assert died.value.epochs_run == 1  # the finished epoch is counted
    assert executor.run(PARAMS, DATA, TrainingSettings(epochs=1)).state is TrialState.COMPLETE


def test_a_trial_limit_longer_than_poll_accepts_fails_only_that_trial(executor) -> None:
    """Issue 16, finding 1: a limit above ~24.8 days made ``conn.poll`` raise OverflowError in
    the worker, which died of it. Such settings are refused by ``TrainingSettings`` now; built
    unchecked (as from an API that still took them), they must cost one trial, no more."""
    for limit in (3e6, 1e12):
        settings = TrainingSettings.model_construct(
            **{**TrainingSettings(epochs=2).model_dump(), "timeout_seconds": limit}
        )
        result = executor.run(PARAMS, DATA, settings)
        assert result.state is TrialState.FAILED
        assert "timeout_seconds" in result.reason
    assert executor.run(PARAMS, DATA, TrainingSettings(epochs=1)).state is TrialState.COMPLETE


def test_a_child_killed_between_trials_costs_the_next_trial_nothing(executor) -> None:
    executor.run(PARAMS, DATA, TrainingSettings(epochs=1))
    idle = executor._current.process
    idle.kill()
    idle.wait()
    result = executor.run(PARAMS, DATA, TrainingSettings(epochs=1))
    assert result.state is TrialState.COMPLETE
