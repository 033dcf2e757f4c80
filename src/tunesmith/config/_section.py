"""The base class of every config section, shared and task-owned alike.

A section rejects unknown keys, reads its field docstrings as help text (the config reference is
generated from them), re-validates on assignment, and refuses NaN and infinity for every float.
YAML 1.1 reads the bare words `off`, `no`, `on` and `yes` as booleans; for a field whose documented
values are strings such as `"off"` or `"no"`, the boolean is read back as the word the user wrote.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

# The words YAML 1.1 turns into booleans, by the boolean they become.
_YAML_WORDS = {False: ("off", "no", "none", "false"), True: ("on", "yes", "true")}


class Section(BaseModel):
    """One config section: `model`, `training`, a task's own section, ..."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _yaml_booleans_as_words(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        fixed = dict(raw)
        for name, value in raw.items():
            field = cls.model_fields.get(name)
            if isinstance(value, bool) and field is not None:
                word = next((w for w in _YAML_WORDS[value] if w in _literal_words(field.annotation)), None)
                if word is not None and bool not in _plain_types(field.annotation):
                    fixed[name] = word
        return fixed


def _literal_words(annotation: Any) -> set[str]:
    return {a for a in _annotation_parts(annotation) if isinstance(a, str)}


def _plain_types(annotation: Any) -> set[Any]:
    return {a for a in _annotation_parts(annotation) if isinstance(a, type)}


def _annotation_parts(annotation: Any) -> list[Any]:
    """The members of unions and the values of Literals in an annotation, flattened."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [part for arg in typing.get_args(annotation) for part in _annotation_parts(arg)]
    if origin is typing.Literal:
        return list(typing.get_args(annotation))
    return [annotation]


def section_fields(schema: type[BaseModel]) -> dict[str, type[Section]]:
    """The fields of a run config schema that are sections, by name (`training`, `question_answering`)."""
    return {name: field.annotation for name, field in schema.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, Section)}
