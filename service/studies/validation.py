"""Every check a submitted spec must pass before a study exists: its shape, the trainer's
ranges, the budget, the pruner, then (``feasibility``) the dataset and what it admits.

A bad spec is refused once, with every problem it has, whichever check finds it: each stage
runs on what the earlier ones left usable and skips only what depends on a part found broken.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pydantic import (
    ValidationError,
)

from hpsearch.errors import FieldError, InvalidSpecError, field_errors_from_pydantic
from hpsearch.params import (
    PARAMETER_NAMES,
    Domain,
    search_domain,
    validate_params,
)
from hpsearch.results import MAX_EPOCHS
from service.studies.feasibility import check_combinations, check_dataset, check_for_dataset, usable
from service.studies.spec import (
    CHOICE_TAGS,
    MAX_FLOAT_STEPS,
    MODEL_PARAMS,
    SEARCH_TAGS,
    STACK_OF,
    STAND_INS,
    SUBMITTED,
    TIME_LIMITS,
    TRAINING_PARAMS,
    Categorical,
    DatasetShape,
    FloatRange,
    IntRange,
    PrunerSpec,
    StudySpec,
    layer_search_help,
)


def parse_study_spec(
    raw: Any,
    max_trials: int,
    max_epochs: int,
    max_weights: int | None = None,
    uploaded_shape: Callable[[str], DatasetShape | None] | None = None,
) -> StudySpec:
    """Validate a submitted spec completely, or raise ``InvalidSpecError`` listing every problem,
    whichever stage finds it: its shape, the trainer's ranges, the budget, the dataset, the
    combinations of fixed and searched values, and what the dataset's shape tells (a cnn needs
    images; the largest model must have at most ``max_weights`` weights, when given).

    ``uploaded_shape(id)`` gives an uploaded dataset's shape (``None``: no such dataset); without
    it, the checks that need an uploaded dataset's shape are not made.
    """
    if not isinstance(raw, dict):
        raise InvalidSpecError([FieldError("(body)", "must be a JSON object")])
    spec, errors, broken = _parse_structure(raw)
    if spec is None:
        raise InvalidSpecError(_unique(errors))
    for check in (_check_sections, _check_search_space):
        found = check(spec)
        errors += found
        broken |= _parameters_at_fault(found)
    errors += _check_budget(spec, max_trials, max_epochs, broken)
    found, shape = check_dataset(spec, broken, uploaded_shape)
    errors += found
    fixed, space = usable(spec, broken)
    errors += check_combinations(spec, fixed, space, broken)
    if shape is not None:
        errors += check_for_dataset(spec, fixed, space, broken, shape, max_weights)
    if errors:
        raise InvalidSpecError(_unique(errors))
    return spec


def _unique(errors: list[FieldError]) -> list[FieldError]:
    return list(dict.fromkeys(errors))


# -- stage 1: the spec's shape --------------------------------------------------------------


def _parse_structure(raw: dict[str, Any]) -> tuple[StudySpec | None, list[FieldError], set[str]]:
    """The spec's shape (pydantic) with every error in it, and what those errors make unusable:
    each part at fault is set aside (a required field gets a stand-in) and the rest parsed
    again, so that the later checks can still run on it."""
    errors: list[FieldError] = []
    broken: set[str] = set()
    candidate = dict(raw)
    for _ in range(3):  # set aside what failed; a second pass is expected to pass
        try:
            return StudySpec.model_validate(candidate, context=SUBMITTED), errors, broken
        except ValidationError as exc:
            details = exc.errors(include_url=False)
            parts = {_part_of(detail["loc"], candidate) for detail in details}
            for detail, error in zip(details, field_errors_from_pydantic(exc), strict=True):
                errors.append(_structure_error(detail, error, raw))
            if () in parts:
                return None, errors, broken
            for part in sorted(parts, key=len, reverse=True):  # entries before whole sections
                broken |= _broken_by(part)
                _set_aside(candidate, part)
    return None, errors, broken


def _structure_error(detail: Any, error: FieldError, raw: dict[str, Any]) -> FieldError:
    """``error`` named as the user wrote the field (no union members in its path), or the
    layer-search help for any search of a layer stack but an ``int`` one."""
    loc = [str(p) for p in detail["loc"]]
    if len(loc) == 1 and loc[0] in TIME_LIMITS and detail["type"] == "less_than_equal":
        limit = detail["ctx"]["le"]
        return FieldError(
            loc[0],
            f"at most {limit:,.0f} seconds ({TIME_LIMITS[loc[0]]}), got {_show(detail['input'])}",
        )
    if loc[:1] == ["search_space"] and len(loc) >= 2 and loc[1] in STACK_OF:
        entry = raw["search_space"].get(loc[1])  # a dict: its entries have errors
        if not (isinstance(entry, dict) and entry.get("type") == "int"):
            return FieldError(f"search_space.{loc[1]}", layer_search_help(STACK_OF[loc[1]]))
    if loc[:1] == ["search_space"] and len(loc) >= 3 and loc[2] in SEARCH_TAGS:
        del loc[2]
        if len(loc) == 5 and loc[2] == "choices" and loc[4] in CHOICE_TAGS:
            got = detail.get("input")
            return FieldError(
                ".".join(loc[:4]), f"must be a string, a boolean or a number (got {got!r})"
            )
    return FieldError(".".join(loc) or error.field, error.reason)


def _part_of(loc: tuple[Any, ...], candidate: dict[str, Any]) -> tuple[str, ...]:
    """The part of the spec an error is in: a section's entry, or a top-level field."""
    if not loc:
        return ()
    head = str(loc[0])
    section = candidate.get(head)
    if (
        head in ("search_space", "objective", "sampler", "pruner")
        and len(loc) >= 2
        and isinstance(section, dict)
        and loc[1] in section
    ):
        return head, str(loc[1])
    return (head,)


def _broken_by(part: tuple[str, ...]) -> set[str]:
    """What the later checks must not rely on once ``part`` is set aside: parameter names (all
    of a section's for a whole section), or the top-level field's name."""
    if part[0] == "search_space":
        return {part[1]} if len(part) == 2 else set(PARAMETER_NAMES)
    if part == ("model",):
        return set(MODEL_PARAMS)
    if part == ("training",):
        return set(TRAINING_PARAMS)
    return {part[0]}


def _set_aside(candidate: dict[str, Any], part: tuple[str, ...]) -> None:
    if len(part) == 2:
        section = dict(candidate[part[0]])
        section.pop(part[1], None)
        candidate[part[0]] = section
    elif part[0] in STAND_INS:
        candidate[part[0]] = STAND_INS[part[0]]
    elif part[0] == "search_space":
        candidate[part[0]] = {}  # not the default space: what is searched is unknown
    else:
        candidate.pop(part[0], None)


def _parameters_at_fault(errors: list[FieldError]) -> set[str]:
    """The parameters that ``errors`` (of the sections and search-space checks) concern."""
    out = set()
    for e in errors:
        parts = e.field.split(".")
        if len(parts) > 1 and parts[1] in PARAMETER_NAMES:
            out.add(parts[1])
    return out


# -- stage 2: each fixed and searched value against the trainer's ranges ----------------------


def _check_sections(spec: StudySpec) -> list[FieldError]:
    errors = []
    for section, allowed in (("model", MODEL_PARAMS), ("training", (*TRAINING_PARAMS, "epochs"))):
        for name in getattr(spec, section):
            if name in allowed:
                continue
            if name in PARAMETER_NAMES:
                other = "training" if section == "model" else "model"
                reason = f"belongs in {other}, not {section}"
            else:
                reason = f"unknown parameter; known: {', '.join(allowed)}"
            errors.append(FieldError(f"{section}.{name}", reason))
    fixed = spec.given_fixed
    if fixed:
        try:
            validate_params(fixed)
        except InvalidSpecError as exc:
            for e in exc.errors:
                head = e.field.split(".")[0]
                if head not in PARAMETER_NAMES:
                    continue  # an unknown name: reported above, in the section it was given
                section = "model" if head in spec.model else "training"
                errors.append(FieldError(f"{section}.{e.field}", e.reason))
    return errors


def _check_search_space(spec: StudySpec) -> list[FieldError]:
    errors: list[FieldError] = []
    fixed = spec.given_fixed
    for name, param in (spec.search_space or {}).items():
        where = f"search_space.{name}"
        if name not in PARAMETER_NAMES:
            errors.append(
                FieldError(where, "unknown parameter; known: " + ", ".join(PARAMETER_NAMES))
            )
            continue
        stack = STACK_OF.get(name)
        if stack is not None and not isinstance(param, IntRange):
            errors.append(FieldError(where, layer_search_help(stack)))
            continue
        # A fixed list beside its searched size gives the layers' count: not a conflict.
        gives_count = stack is not None and isinstance(fixed.get(name), list)
        if name in fixed and not gives_count:
            section = "model" if name in MODEL_PARAMS else "training"
            errors.append(FieldError(where, f"both fixed (in {section}) and searched; remove one"))
        domain = search_domain(name)
        if isinstance(param, Categorical):
            errors += _check_choices(where, param, domain)
            continue
        if domain.kind not in ("float", "int"):
            errors.append(
                FieldError(
                    f"{where}.type",
                    f"{name} is not numeric: use "
                    f"'categorical' with choices from {domain.describe()}",
                )
            )
            continue
        if domain.kind == "int" and isinstance(param, FloatRange):
            errors.append(FieldError(f"{where}.type", f"{name} is an integer: use 'int'"))
            continue
        errors += _check_range(where, param, domain)
    return errors


def _check_choices(where: str, param: Categorical, domain: Domain) -> list[FieldError]:
    """Each choice in the parameter's domain, and listed once: Optuna finds a sampled choice by
    equality, so of two equal choices (``1`` and ``1.0``, ``1`` and ``true``) it only ever
    returns the first."""
    errors = []
    seen: dict[Any, Any] = {}
    for choice in param.choices:
        if domain.kind in ("categorical", "bool") and not _one_of(choice, domain.choices):
            reason = f"{_show(choice)} is not allowed; {domain.describe()}"
            errors.append(FieldError(f"{where}.choices", reason))
        elif domain.kind in ("float", "int") and (
            isinstance(choice, (str, bool)) or not domain.contains(choice)
        ):
            errors.append(
                FieldError(f"{where}.choices", f"{_show(choice)} is outside {domain.describe()}")
            )
        elif choice in seen:
            errors.append(
                FieldError(
                    f"{where}.choices",
                    f"{_show(choice)} is listed twice (it equals {_show(seen[choice])}): Optuna "
                    "would only ever sample the first; list each value once",
                )
            )
        else:
            seen[choice] = choice
    return errors


def _one_of(choice: Any, allowed: tuple[Any, ...]) -> bool:
    """``choice`` is one of ``allowed``, of the same type (``1`` equals ``True``, but is not it)."""
    return any(choice == a and type(choice) is type(a) for a in allowed)


def _check_range(where: str, param: FloatRange | IntRange, domain: Domain) -> list[FieldError]:
    """The range's bounds in the domain, and a range Optuna searches as written: it would
    silently lower ``high`` to the last whole step (to ``low`` itself for a step larger than
    the range), and a log-scale integer search takes every integer."""
    errors = []
    if param.low >= param.high:
        errors.append(
            FieldError(
                f"{where}.low", f"must be below high ({_show(param.high)}), got {_show(param.low)}"
            )
        )
    if param.log and param.low <= 0:
        errors.append(
            FieldError(f"{where}.low", f"must be > 0 on a log scale, got {_show(param.low)}")
        )
    stepped = param.step is not None and not (isinstance(param, IntRange) and param.step == 1)
    if param.log and stepped:
        errors.append(
            FieldError(
                f"{where}.step",
                "cannot be combined with log: a log scale has no fixed step; remove step "
                "(or log, to search in steps)",
            )
        )
    for bound in ("low", "high"):
        value = getattr(param, bound)
        if not domain.contains(value):
            errors.append(
                FieldError(
                    f"{where}.{bound}",
                    f"{_show(value)} is outside what the trainer accepts: {domain.describe()}",
                )
            )
    if stepped and not param.log and param.low < param.high and not errors:
        problem = _step_problem(param, domain)
        if problem:
            errors.append(FieldError(f"{where}.step", problem))
    return errors


def _step_problem(param: FloatRange | IntRange, domain: Domain) -> str | None:
    """Why Optuna would not search ``param``'s range in its steps as written, and what to write
    instead; ``None`` when it would. Float ranges are measured as Optuna measures them, in
    decimal (``_adjust_discrete_uniform_high``: 0.5 holds five steps of 0.1)."""
    assert param.step is not None
    if isinstance(param, FloatRange):
        low, high, step = (Decimal(str(v)) for v in (param.low, param.high, param.step))
    else:
        low, high, step = Decimal(param.low), Decimal(param.high), Decimal(param.step)
    span = high - low
    shown = f"[{_show(param.low)}, {_show(param.high)}]"
    if step > span:
        return (
            f"{_show(param.step)} is larger than the range {shown}: Optuna would search "
            f"{_show(param.low)} alone; use a step of at most {_decimal(span)} that divides "
            "high - low, or leave step out"
        )
    if isinstance(param, FloatRange) and span / step > MAX_FLOAT_STEPS:
        return (
            f"{_show(param.step)} cuts the range {shown} into more than {MAX_FLOAT_STEPS:,} "
            "steps: leave step out to search the range continuously"
        )
    if span % step:
        below = low + span // step * step
        above = below + step
        instead = f"high {_decimal(below)}"
        if domain.contains(float(above) if isinstance(param, FloatRange) else int(above)):
            instead += f" or {_decimal(above)}"
        return (
            f"the range {shown} is not a whole number of steps of {_show(param.step)}: Optuna "
            f"would search only up to {_decimal(below)}; make it {instead} (low plus a multiple "
            "of step), or use a step that divides high - low"
        )
    return None


def _decimal(value: Decimal) -> str:
    return f"{float(value):g}"


def _show(value: Any) -> str:
    """A value as refusals quote it: numbers short whatever their size (an integer past 1e308
    has no float), strings cut at 40 characters."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 42 else f"{text[:40]}…{text[-1]} ({len(text) - 2} characters)"
    if isinstance(value, float):
        text = repr(value)  # 5.0 as written, not 5
        return text if len(text) <= 12 else f"{value:g}"
    digits = str(abs(value))
    if len(digits) <= 16:
        return str(value)
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"


# -- stage 3: the budget and the dataset ------------------------------------------------------


def _check_budget(
    spec: StudySpec, max_trials: int, max_epochs: int, broken: set[str]
) -> list[FieldError]:
    errors = []
    if "n_trials" not in broken and spec.n_trials > max_trials:
        errors.append(
            FieldError(
                "n_trials",
                f"at most {max_trials} (configured maximum, HPSEARCH_MAX_TRIALS), "
                f"got {spec.n_trials}",
            )
        )
    max_epochs = min(max_epochs, MAX_EPOCHS)  # what a trial's settings accept, whatever is set
    epochs = spec.training.get("epochs", spec.epochs)
    if epochs is not None and (
        not isinstance(epochs, int) or isinstance(epochs, bool) or not 1 <= epochs <= max_epochs
    ):
        errors.append(
            FieldError(
                "training.epochs",
                f"must be an integer in [1, {max_epochs}] (HPSEARCH_MAX_EPOCHS), "
                f"got {_show(epochs)}",
            )
        )
    elif "pruner" not in broken:
        errors += _check_pruner(spec.pruner, spec.n_epochs)
    if "epochs" in spec.training and spec.epochs is not None:
        errors.append(FieldError("epochs", "given both here and as training.epochs"))
    return errors


def _check_pruner(pruner: PrunerSpec, epochs: int) -> list[FieldError]:
    """A pruner whose first decision comes after the last epoch would silently prune nothing."""
    if pruner.type in ("hyperband", "successive_halving"):
        name, value = "min_resource", pruner.min_resource
    elif pruner.type == "median":
        name, value = "n_warmup_steps", pruner.n_warmup_steps
    else:
        return []
    if value <= epochs:
        return []
    return [
        FieldError(
            f"pruner.{name}",
            f"{value} is more than the {epochs} epochs a trial trains: no trial could ever be "
            f'pruned; use at most {epochs}, or "type": "none" for no pruning',
        )
    ]
