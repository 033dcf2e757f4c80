"""The Hugging Face family adapter: the Auto* pattern written once, for every transformers task.

A task names its `AutoModelFor...` class and how its tokenizer is read; this adapter does the rest
the same way for all of them: resolve the source, build the model with the task's head (pre-trained,
or the same architecture from random initialization under `model.pretrained: false`), load a
fine-tuned one as saved, save model and tokenizer with `save_pretrained`, and group the layers
(`transformer_layer_groups`, the family's one rule).

A pre-trained load is checked: transformers only warns when a weights file does not fit the
architecture (an empty file, renamed keys) and then trains from random weights. Here a missing
tensor outside the head is refused, naming the missing and unexpected counts; a new head for the
task's labels is the only part allowed to start from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tunesmith.config import ModelConfig
from tunesmith.errors import ModelSourceError
from tunesmith.models.layer_groups import LayerGroup, transformer_layer_groups
from tunesmith.models.sources import ResolvedSource, dropout_overrides, from_pretrained_kwargs, loading, resolve_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger("tunesmith")

TokenizerLoader = Callable[[ResolvedSource, dict[str, Any]], Any]


def plain_tokenizer(resolved: ResolvedSource, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolved.location, **kwargs)


class HFModel:
    """One task's Hugging Face model: its Auto class, source and tokenizer; `tokenizer` is set by build/load."""

    def __init__(self, auto_class: str, model: ModelConfig, tokenizer: TokenizerLoader = plain_tokenizer):
        self.auto_class = auto_class
        self.settings = model
        self.resolved = resolve_source(model.source, model.trust_remote_code)
        self.read_tokenizer = tokenizer
        self.tokenizer: Any = None
        self.fresh_head = False  # set by build: head tensors missing from (or mis-shaped in) the weights

    @property
    def kwargs(self) -> dict[str, Any]:
        """What every `from_pretrained` call of this source takes (local only, remote code, GGUF file)."""
        return from_pretrained_kwargs(self.resolved, self.settings.trust_remote_code)

    def load_tokenizer(self) -> Any:
        with loading(self.resolved):
            self.tokenizer = self.read_tokenizer(self.resolved, self.kwargs)
        return self.tokenizer

    def model_config(self, **overrides: Any) -> Any:
        """The source's transformers config with `overrides` (and `model.dropout`) applied."""
        from transformers import AutoConfig

        with loading(self.resolved):
            return AutoConfig.from_pretrained(self.resolved.location, **self.dropout(), **overrides, **self.kwargs)

    def dropout(self) -> dict[str, float]:
        return dropout_overrides(self.resolved, self.settings.dropout, self.settings.trust_remote_code)

    def build(self, head: dict[str, Any] | None = None, new_head: bool = True, **load: Any) -> PreTrainedModel:
        """The source with this task's head: pre-trained weights checked to fit, or random under
        `model.pretrained: false` (the from-scratch baseline keeps the source's tokenizer).

        Args:
            head: Config overrides that shape the head (`num_labels`, `id2label`, ...).
            new_head: A head of another size in the source (fine-tuned on other labels) is replaced.
            load: Extra `from_pretrained` arguments (quantization).

        Raises:
            ModelSourceError: the weights cannot be read, or do not fit the architecture.
        """
        import transformers

        auto = getattr(transformers, self.auto_class)
        self.load_tokenizer()
        if not self.settings.pretrained:
            return auto.from_config(self.model_config(**(head or {})), trust_remote_code=self.settings.trust_remote_code)
        with loading(self.resolved):
            model, info = auto.from_pretrained(
                self.resolved.location, ignore_mismatched_sizes=new_head, output_loading_info=True,
                **(head or {}), **self.dropout(), **self.kwargs, **load)
        self.fresh_head = check_weights_fit(model, info, self.resolved) > 0
        return model

    def load_trained(self, **load: Any) -> PreTrainedModel:
        """A fine-tuned model as saved (head and labels included), for evaluate/predict."""
        import transformers

        self.load_tokenizer()
        with loading(self.resolved):
            model, info = getattr(transformers, self.auto_class).from_pretrained(
                self.resolved.location, output_loading_info=True, **self.kwargs, **load)
        check_weights_fit(model, info, self.resolved)
        return model

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        model.save_pretrained(folder, state_dict=weights)  # type: ignore[operator]  # None: its own state_dict; torch types Module.__getattr__ as Tensor | Module
        self.tokenizer.save_pretrained(folder)

    @staticmethod
    def layer_groups(model: nn.Module) -> list[LayerGroup]:
        return transformer_layer_groups(model)


def check_weights_fit(model: nn.Module, info: dict[str, Any], resolved: ResolvedSource) -> int:
    """Refuses a load that left backbone tensors at random initialization.

    Missing head tensors are expected (a new head for the task's labels); unexpected tensors are the
    source's own heads (an MLM or pre-training head) and are dropped, as transformers does.

    Returns:
        How many tensors start from random initialization: missing ones, and mis-shaped ones
        (a head fine-tuned on another number of labels) that `ignore_mismatched_sizes` re-drew.

    Raises:
        ModelSourceError: tensors outside the head are missing from the weights file.
    """
    missing, unexpected = list(info.get("missing_keys") or []), list(info.get("unexpected_keys") or [])
    redrawn = len(info.get("mismatched_keys") or [])
    if not missing:
        return redrawn
    head = {name for name, _ in transformer_layer_groups(model)[-1].params}
    tied = set(getattr(model, "all_tied_weights_keys", None) or [])
    backbone = [k for k in missing if k not in head and k not in tied]
    if backbone:
        total = len(model.state_dict())
        raise ModelSourceError(
            f"the weights in {resolved.location} do not fit {type(model).__name__}: {len(backbone)} of its {total} "
            f"tensors are missing from the file (e.g. {', '.join(backbone[:3])}) and {len(unexpected)} tensors in the "
            "file are unexpected. It would train from random weights. Check model.source (a damaged or foreign "
            "weights file), or set model.pretrained: false to train from scratch on purpose")
    new = [k for k in missing if k not in tied]
    log.info("%s: new %s (%d tensors) start from random initialization", resolved.name, "head", len(new))
    return len(new) + redrawn
