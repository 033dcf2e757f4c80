"""Config error messages: one pydantic error in, one line out naming the key, the value and a fix.

Unknown keys get the nearest valid key ("did you mean"), also when a key was put in the wrong
section (`data.image_size` -> `image_classification.image_size`). Values are shown cut short, so
a huge value never floods the terminal.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from tunesmith.config._section import section_fields

MAX_SHOWN = 80  # characters of a bad value shown in an error


def describe_error(err: Mapping[str, Any], schema: type[BaseModel]) -> str:
    """Turns one pydantic error into a message naming the key, the value and a fix."""
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("int", "literal", "constrained"))]
    key = ".".join(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        return _unknown_key(loc, schema)
    if kind == "value_error" and not key:
        return str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    if kind == "missing":
        return f"{key}: required key is missing"
    expected = err["msg"]
    if kind == "literal_error":
        expected = expected.replace("Input should be", "must be one of")
    shown = repr(value)
    if len(shown) > MAX_SHOWN:
        shown = shown[:MAX_SHOWN] + f"... ({len(shown):,} characters)"
    return f"{key}: {shown} is not valid ({expected})"


def _unknown_key(loc: list[str], schema: type[BaseModel]) -> str:
    sections = section_fields(schema)
    *parents, name = loc
    for p in parents:
        schema = sections.get(p, schema)
    valid = list(schema.model_fields)
    where = ".".join(parents) or "top level"
    hint = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if not hint and not parents:
        # A bare training key at the top level: point to its section.
        owners = [f"{s}.{name}" for s, sec in sections.items() if name in sec.model_fields]
        hint = owners[:1]
    if not hint:
        # A key put in the wrong section.
        for s, sec in sections.items():
            close = difflib.get_close_matches(name, list(sec.model_fields), n=1, cutoff=0.75)
            if close:
                hint = [f"{s}.{close[0]}"]
                break
    suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(valid)}"
    return f"{'.'.join(loc)}: unknown key in {where}{suggestion}"
