"""Config section for `tunesmith tune`: the search space, budget, pruning and study storage.

`search.space` maps dotted config keys (`training.learning_rate`) to a range
(`{low, high, log, step}`) or a list of `choices`. It is checked when the config loads, against
the same schema every other key is checked against: an unknown key gets the nearest valid one,
a bad range names its key, and every bound or choice must be a value the key itself accepts.
Every section but `tracking`, `compare` and `search` itself can be searched, a task's own included.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError

from tunesmith.config._section import Section, section_fields

if TYPE_CHECKING:
    from tunesmith.config._run import RunConfig

UNSEARCHABLE_SECTIONS = ("tracking", "compare", "search")
RANGE_KEYS = ("low", "high", "log", "step")



class SearchConfig(Section):
    n_trials: int = Field(20, ge=1)
    """`tunesmith tune`: trials the study should hold (completed plus pruned); a resumed study
    runs only the missing ones."""
    timeout_minutes: float | None = Field(None, gt=0)
    """`tunesmith tune`: start no new trial after this many minutes (a running trial finishes)."""
    storage: str | None = None
    """Where the study lives. `null`: the SQLite file `<output_dir>/study.db`, so a crashed search
    resumes; an RDB URL (`postgresql://user@host/db`) lets several machines share one study."""
    study_name: str | None = None
    """Name of the study in the storage; `null` uses the name of the `output_dir` folder."""
    pruning: bool = True
    """Stop unpromising trials early: at each evaluation a trial whose `metric_for_best_model` is
    worse than the median of earlier trials at the same evaluation is pruned."""
    pruning_startup_trials: int = Field(3, ge=0)
    """Trials that run to the end before any trial can be pruned."""
    pruning_warmup_evals: int = Field(0, ge=0)
    """Evaluations of each trial that are never pruned (0: a trial can be pruned at its first)."""
    space: dict[str, Any] = {}
    """What is searched: dotted config keys mapped to `{low, high}` (with `log: true` for rates,
    `step` for a grid) or to `{choices: [...]}`, e.g. `training.learning_rate: {low: 1.0e-5,
    high: 1.0e-3, log: true}`. Integer keys are searched over integers; give `step: 1` to search
    a float key such as `training.num_train_epochs` over whole numbers."""

    def problems(self, config: RunConfig) -> list[str]:
        """Every problem with `space`, checked against the schema of `config` (the RunConfig)."""
        return parse_space(config)[1]


@dataclass(frozen=True)
class ParamSpace:
    """One searched key: a numeric range or a list of choices, checked."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None
    integer: bool = False


def parse_space(config: RunConfig) -> tuple[list[ParamSpace], list[str]]:
    """The searched keys of a RunConfig's `search.space`, and every problem with them."""
    spaces, problems = [], []
    for key, spec in config.search.space.items():
        where = f"search.space.{key}"
        field_problem = _field_problem(config, key)
        if field_problem:
            problems.append(f"{where}: {field_problem}")
            continue
        if not isinstance(spec, dict):
            problems.append(f"{where}: give a mapping {{low, high}} or {{choices: [...]}}, got {spec!r}")
            continue
        space, problem = _parse_one(config, key, spec)
        if problem:
            problems.append(f"{where}: {problem}")
        else:
            spaces.append(space)
    return spaces, problems


def _field_problem(config: BaseModel, key: str) -> str | None:
    """Why `key` cannot be searched (unknown, not a setting), with the nearest valid key."""
    searchable = [s for s in section_fields(type(config)) if s not in UNSEARCHABLE_SECTIONS]
    valid = [f"{s}.{name}" for s in searchable for name in type(getattr(config, s)).model_fields]
    if key in valid:
        return None
    hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not hint and "." not in key:
        hint = [k for k in valid if k.endswith("." + key)][:1]
    suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; searchable sections: {', '.join(searchable)}"
    return f"unknown key {key!r}{suggestion}"


def _parse_one(config: BaseModel, key: str, spec: dict[str, Any]) -> tuple[ParamSpace, str | None]:
    for name in spec:
        if name not in (*RANGE_KEYS, "choices"):
            hint = difflib.get_close_matches(name, [*RANGE_KEYS, "choices"], n=1, cutoff=0.5)
            fix = f"did you mean {hint[0]!r}?" if hint else f"use {', '.join(RANGE_KEYS)} or choices"
            return ParamSpace(key), f"unknown key {name!r}; {fix}"
    if "choices" in spec:
        if len(spec) > 1:
            return ParamSpace(key), "give either choices or a range (low, high, log, step), not both"
        return _parse_choices(config, key, spec["choices"])
    return _parse_range(config, key, spec)


def _parse_choices(config: BaseModel, key: str, choices: Any) -> tuple[ParamSpace, str | None]:
    if not isinstance(choices, list) or not choices:
        return ParamSpace(key), "choices must be a non-empty list"
    if any(isinstance(c, dict | list) for c in choices):
        return ParamSpace(key), "choices must be plain values (numbers, strings, true/false, null)"
    for choice in choices:
        problem = _value_problem(config, key, choice)
        if problem:
            return ParamSpace(key), f"choice {choice!r} is not valid for {key} ({problem})"
    return ParamSpace(key, choices=tuple(choices)), None


def _parse_range(config: BaseModel, key: str, spec: dict[str, Any]) -> tuple[ParamSpace, str | None]:
    missing = [name for name in ("low", "high") if name not in spec]
    if missing:
        return ParamSpace(key), f"a range needs {' and '.join(missing)} (or give choices: [...])"
    low, high, step = _number(spec["low"]), _number(spec["high"]), _number(spec.get("step"))
    log = spec.get("log", False)
    kinds = _accepted_kinds(config, key)
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return ParamSpace(key), f"{name} must be a number, got {spec[name]!r}"
    if not kinds & {int, float}:
        return ParamSpace(key), f"{key} is not numeric; search it with choices: [...]"
    if not isinstance(log, bool):
        return ParamSpace(key), f"log must be true or false, got {log!r}"
    if low >= high:
        return ParamSpace(key), f"low ({low}) must be smaller than high ({high})"
    if log and low <= 0:
        return ParamSpace(key), f"a log range needs low > 0, got {low}"
    if step is not None and (step <= 0 or log):
        return ParamSpace(key), "step must be > 0 and cannot be combined with log: true"
    integer = float not in kinds or (isinstance(low, int) and isinstance(high, int) and isinstance(step, int))
    if integer and not (float(low).is_integer() and float(high).is_integer()):
        return ParamSpace(key), f"{key} takes whole numbers; give whole-number low and high"
    for bound in (low, high):
        problem = _value_problem(config, key, int(bound) if integer else bound)
        if problem:
            return ParamSpace(key), f"bound {bound!r} is not valid for {key} ({problem})"
    if integer:
        low, high, step = int(low), int(high), int(step) if step is not None else None
    return ParamSpace(key, low=low, high=high, log=log, step=step, integer=integer), None


def _number(value: Any) -> Any:
    """YAML reads `1e-5` (no dot) as a string; accept it as the number it means."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def _section_field(config: BaseModel, key: str) -> tuple[type[BaseModel], str]:
    section, name = key.split(".", 1)
    return type(getattr(config, section)), name


def _accepted_kinds(config: BaseModel, key: str) -> set[type]:
    """The plain types a key's annotation admits (`float | None` -> {float, NoneType})."""
    schema, name = _section_field(config, key)
    kinds: set[type] = set()
    pending = [schema.model_fields[name].annotation]
    while pending:
        annotation = pending.pop()
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            pending.extend(typing.get_args(annotation))
        elif origin is typing.Literal:
            kinds.update(type(a) for a in typing.get_args(annotation))
        elif origin is typing.Annotated:  # a bounded member of a union (`Annotated[int, Field(ge=0)]`)
            pending.append(typing.get_args(annotation)[0])
        elif isinstance(annotation, type):
            kinds.add(annotation)
    return kinds


def _value_problem(config: BaseModel, key: str, value: Any) -> str | None:
    schema, name = _section_field(config, key)
    try:
        schema.model_validate({name: value})
    except ValidationError as exc:
        return "; ".join(err["msg"] for err in exc.errors())
    return None
