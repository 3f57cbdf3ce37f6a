"""The study notes' BN model (SEEDS.md): one definition, the example file users see too."""

import json
from pathlib import Path
from typing import Any

NOTES_MODEL_FILE = Path(__file__).parents[2] / "examples" / "notes_bn_model.json"
# Flatten -> BN -> Dense(300, elu, he_normal) -> BN -> Dense(100, elu) -> BN -> softmax; plain
# SGD, learning rate 0.01, batch 50.
NOTES_MODEL: dict[str, Any] = json.loads(NOTES_MODEL_FILE.read_text())
