"""Trainer tests share one in-process TensorFlow, bounded to this machine's cores."""

import os

import pytest

from trainer.training import configure_threads

configure_threads(min(2, os.cpu_count() or 1), 1)


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache, so that no test sees (or fills) the real one."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras"
