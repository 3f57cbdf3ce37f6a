"""hpsearch: the contract shared by the service and the trainer, and the ``hpsearch`` command.

This package depends on pydantic alone. ``service`` and ``trainer`` both import it and never
each other, so that the API runs without TensorFlow and a worker runs without FastAPI,
SQLAlchemy or Optuna.
"""

from hpsearch.errors import FieldError, InvalidSpecError
from hpsearch.params import PARAMETER_NAMES, TrialParams, parameter_domain, validate_params
from hpsearch.results import EpochMetrics, TrialResult, TrialState

__version__ = "0.1.0"

__all__ = [
    "PARAMETER_NAMES",
    "EpochMetrics",
    "FieldError",
    "InvalidSpecError",
    "TrialParams",
    "TrialResult",
    "TrialState",
    "parameter_domain",
    "validate_params",
]
