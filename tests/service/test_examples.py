"""The study specs in examples/ are the README's first steps: each must be accepted as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.config import Settings
from service.studies.validation import parse_study_spec

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.json"))
STUDY_SPECS = [p for p in EXAMPLES if "search_space" in json.loads(p.read_text())]


def test_the_examples_folder_holds_study_specs() -> None:
    assert {p.name for p in STUDY_SPECS} >= {"digits-bn-clip.json", "digits-width-depth.json"}


@pytest.mark.parametrize("path", STUDY_SPECS, ids=lambda p: p.name)
def test_each_example_spec_is_accepted_with_its_search_space(path: Path) -> None:
    raw = json.loads(path.read_text())
    settings = Settings()
    spec = parse_study_spec(
        raw, settings.max_trials, settings.max_epochs, settings.max_model_params
    )
    assert spec.name == raw["name"]
    assert set(spec.search_space) == set(raw["search_space"])
