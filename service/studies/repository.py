"""Study rows as the use cases read them: the validated spec stored with a study, parsed once
per process."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from service.db.models import Study
from service.studies.spec import StudySpec

_SPECS: OrderedDict[str, StudySpec] = OrderedDict()


_SPECS_LOCK = threading.Lock()


def spec_of(study: Study) -> StudySpec:
    """The validated spec stored with a study."""
    return parsed_spec(study.uid, study.spec)


def parsed_spec(uid: str, stored: dict[str, Any]) -> StudySpec:
    """A stored spec never changes: it is validated once per process, keyed by the study's
    uid (unique, even across deleted studies)."""
    with _SPECS_LOCK:
        spec = _SPECS.get(uid)
        if spec is not None:
            _SPECS.move_to_end(uid)
            return spec
    spec = StudySpec.model_validate(stored)
    with _SPECS_LOCK:
        _SPECS[uid] = spec
        if len(_SPECS) > 256:
            _SPECS.popitem(last=False)
    return spec
