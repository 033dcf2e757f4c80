"""From YAML text and `--set key=value` overrides to a validated config, against a given schema.

YAML is read with `safe_load` after two guards: a document larger than `MAX_YAML_BYTES`, or one with
more than `MAX_YAML_ALIASES` aliases (a "billion laughs" file expands each alias again wherever a
validator walks it), is refused before it is built. All problems are reported together as one
`ConfigError`. The schema is passed in (the task registry assembles it), so this module knows no task.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunesmith.config._errors import describe_error
from tunesmith.config._section import section_fields
from tunesmith.errors import ConfigError

MAX_YAML_BYTES = 1_000_000
MAX_YAML_ALIASES = 100


def raw_config(source: str | Path | dict[str, Any] | BaseModel | None, overrides: list[str] | None,
               schema: type[BaseModel]) -> tuple[dict[str, Any], str | None]:
    """The nested dict a config source and its overrides mean, and the file it came from (if any)."""
    label = None
    if isinstance(source, BaseModel):
        raw = source.model_dump()
    elif isinstance(source, dict):
        raw = copy.deepcopy(source)  # overrides must not change the caller's nested dicts
    elif source is None:
        raw = {}
    else:
        label = str(source)
        raw = read_yaml(Path(source))
    for item in overrides or []:
        apply_override(raw, item, schema)
    return raw, label


def validate_raw(schema: type[BaseModel], raw: dict[str, Any], label: str | None = None) -> Any:
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([describe_error(err, schema) for err in exc.errors()], label) from None


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
        raise ConfigError([f"config file not found: {path}{where}"])
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError([f"the file is {path.stat().st_size:,} bytes; a config is at most {MAX_YAML_BYTES:,}"], str(path))
    try:
        text = path.read_text(encoding="utf-8")
        _check_aliases(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"not valid YAML{where}: {problem}"], str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(["the file is not UTF-8 text"], str(path)) from None
    except _TooManyAliases:
        raise ConfigError([f"more than {MAX_YAML_ALIASES} YAML aliases (*name); write the values out"], str(path)) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"the top level must be a mapping of keys, got {type(raw).__name__}"], str(path))
    return raw


class _TooManyAliases(Exception):
    pass


def _check_aliases(text: str) -> None:
    """Counts alias events before anything is built (parsing is linear in the text)."""
    aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise _TooManyAliases


def apply_override(raw: dict[str, Any], item: str, schema: type[BaseModel]) -> None:
    """Sets one `key=value` in `raw`; a bare key unique to one section goes to that section."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"override {item!r} is not of the form key=value (e.g. training.learning_rate=1e-4)"])
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    if len(parts) == 1 and parts[0] not in schema.model_fields:
        owners = [name for name, section in section_fields(schema).items() if parts[0] in section.model_fields]
        if len(owners) == 1:
            parts = [owners[0], parts[0]]
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError([f"override {item!r}: {part!r} is not a section"])
        node = child
    node[parts[-1]] = value


def dump_config(config: BaseModel, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False), encoding="utf-8")


def reference_markdown(schema: type[BaseModel]) -> str:
    """The config reference as Markdown tables, generated from the schema (used for the README)."""
    sections = section_fields(schema)
    out = []
    top = {name: f for name, f in schema.model_fields.items() if name not in sections}
    for title, fields in [("top level", top)] + [(name, sec.model_fields) for name, sec in sections.items()]:
        out.append(f"\n**{title}**\n\n| key | default | meaning |\n|---|---|---|")
        for name, field in fields.items():
            doc = " ".join((field.description or "").split())
            bounds = _bounds(field)
            value = field.get_default(call_default_factory=True)
            value = value.model_dump() if isinstance(value, BaseModel) else value  # a nested section (an environment)
            default = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1_000_000)  # one line
            default = default.strip().removesuffix("...").strip()
            out.append(f"| `{name}` | `{default}` | {doc}{bounds} |")
    return "\n".join(out).strip() + "\n"


def _bounds(field: Any) -> str:
    """` (> 0, ≤ 100000)` from a field's numeric constraints; empty when it has none."""
    signs = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    parts = [f"{signs[k]} {getattr(m, k)}" for m in field.metadata for k in signs if getattr(m, k, None) is not None]
    return f" ({', '.join(parts)})" if parts else ""
