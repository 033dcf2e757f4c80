"""Layer groups: a backbone seen as an ordered list of parameter groups, input to output.

Freezing, gradual unfreezing and discriminative learning rates act only on these groups, so one
mechanism serves every family. For Hugging Face transformers the groups are found from the
model's structure rather than a table of names: the embeddings module, each block of the main
stack of layers (the longest `ModuleList`), and everything else (pooler, classifier) as the head.
An audio encoder has no token embeddings: its lowest group is the "stem", the convolutional feature
encoder in front of the blocks (Whisper's two convolutions and position table; wav2vec2's, HuBERT's
and WavLM's convolutional feature extractor, its projection and convolutional position embedding).
For decoder-only language models that is [embeddings (with a tied lm_head), each decoder layer,
final norm + lm_head]; for encoder-decoder models [embeddings (both sides'), each encoder block,
each decoder block (with its cross-attention), head (final norms, lm_head)], with a speech
encoder's stem first (Whisper: [stem, decoder embeddings, encoder blocks, decoder blocks, head]). A peft model (LoRA)
is grouped as the model it wraps, keeping only the adapters and trained head modules: each adapter
sits in the group of the layer it adapts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from tunesmith.errors import ModelSourceError


@dataclass
class LayerGroup:
    """One group: a name and the parameters (with their qualified names) it owns."""

    name: str
    modules: list[nn.Module]
    params: list[tuple[str, nn.Parameter]]
    train_when_frozen: list[nn.Module] = field(default_factory=list)
    """Modules inside `modules` that keep training while the group is frozen (BatchNorm under
    `model.train_batchnorm`)."""

    @property
    def num_params(self) -> int:
        return sum(p.numel() for _, p in self.params)


def transformer_layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Groups for a Hugging Face transformer: [embeddings, block 0..N-1, head].

    Raises:
        ModelSourceError: the model has no recognisable stack of blocks.
    """
    if hasattr(model, "get_base_model"):  # a peft model (the model it wraps has `peft_config` too)
        return _adapters_only(transformer_layer_groups(model.get_base_model()), model.base_model.prefix)  # type: ignore[operator, union-attr, arg-type]  # torch types Module.__getattr__ as Tensor | Module
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False) and _has_decoder(model):
        return _encoder_decoder_groups(model)
    base = getattr(model, "base_model", model)
    blocks_name, blocks = _main_stack(base)
    embeddings = _embeddings(base)
    prefix = _prefix_of(model, base)
    groups: list[LayerGroup] = []
    claimed: set[int] = set()
    if embeddings is not None:
        name, module = embeddings
        groups.append(_group("embeddings", module, f"{prefix}{name}.", claimed))
    else:
        groups += _feature_encoder(base, blocks, prefix, claimed)
    for i, block in enumerate(blocks):
        groups.append(_group(f"block.{i}", block, f"{prefix}{blocks_name}.{i}.", claimed))
    head = [(n, p) for n, p in model.named_parameters() if id(p) not in claimed]
    # The head's modules (train/eval mode under freezing): the wrapper's own children, and the base's
    # that are neither the stack, the embeddings, nor wholly in the stem (wav2vec2's feature extractor).
    outer = [m for m in model.children() if m is not base] if base is not model else []
    head_modules = outer + [
        m for n, m in base.named_children() if n not in (blocks_name.split(".")[0], embeddings and embeddings[0])
        and not _all_in(m, claimed)
    ]
    groups.append(LayerGroup("head", head_modules, head))
    return groups


def _all_in(module: nn.Module, claimed: set[int]) -> bool:
    params = [id(p) for p in module.parameters()]
    return bool(params) and all(p in claimed for p in params)


def _has_decoder(model: nn.Module) -> bool:
    """False for the encoder half of an encoder-decoder family on its own (Whisper's audio classifier
    keeps the family's `is_encoder_decoder` config but has no decoder: `get_decoder` returns itself)."""
    get_decoder = getattr(model, "get_decoder", None)
    return get_decoder is None or get_decoder() is not model


def _encoder_decoder_groups(model: nn.Module) -> list[LayerGroup]:
    """Groups of a seq2seq model (T5, BART, a warm-started EncoderDecoderModel): the input side first."""
    names = {id(p): n for n, p in model.named_parameters()}
    claimed: set[int] = set()

    def group(name: str, modules: list[nn.Module]) -> LayerGroup:
        params = []
        for p in (p for m in modules for p in m.parameters()):
            if id(p) in names and id(p) not in claimed:  # tied weights appear under several modules
                params.append((names[id(p)], p))
                claimed.add(id(p))
        return LayerGroup(name, modules, params)

    stacks = [(side, _main_stack(getattr(stack, "base_model", stack))[1])
              for side, stack in (("encoder", model.get_encoder()), ("decoder", model.get_decoder()))]  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module
    in_blocks = {id(p) for _, blocks in stacks for p in blocks.parameters()}
    # A speech encoder-decoder (Whisper) reads audio through a convolutional stem, the lowest group.
    stem = [m for n, m in model.get_encoder().named_modules()  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module
            if n.rsplit(".", 1)[-1] in _FEATURE_ENCODER_NAMES and not any(id(p) in in_blocks for p in m.parameters())]
    stem = stem if any(isinstance(m, nn.Conv1d) for m in stem) else []  # BART's positions alone are embeddings
    groups = [group("stem", stem)] if stem else []
    embedding_modules = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in _EMBEDDING_NAMES
                         and not any(id(p) in in_blocks for p in m.parameters()) and not any(m is s for s in stem)]
    groups.append(group("embeddings", embedding_modules))
    groups += [group(f"{side}.block.{i}", [block]) for side, blocks in stacks for i, block in enumerate(blocks)]
    head = [(n, p) for n, p in model.named_parameters() if id(p) not in claimed]
    if head:  # BART's lm_head is its tied input embedding: then the last decoder block is the top group
        groups.append(LayerGroup("head", [model], head))
    return groups


# Module names of input embeddings (tokens, positions, their norm) in encoder-decoder families.
_EMBEDDING_NAMES = {"shared", "embed_tokens", "embed_positions", "layernorm_embedding", "embeddings"}


def _adapters_only(groups: list[LayerGroup], adapter_prefix: str) -> list[LayerGroup]:
    # Under peft only adapter weights (`lora_A`, `lora_B`, DoRA's `lora_magnitude_vector`) and the
    # copies in `modules_to_save` train; the wrapped layers' own weights stay frozen for good.
    for group in groups:
        group.params = [(n, p) for n, p in group.params if adapter_prefix in n or ".modules_to_save." in n]
    return groups


def _group(name: str, module: nn.Module, prefix: str, claimed: set[int]) -> LayerGroup:
    params = [(prefix + n, p) for n, p in module.named_parameters() if id(p) not in claimed]
    claimed.update(id(p) for _, p in params)
    return LayerGroup(name, [module], params)


def _main_stack(base: nn.Module) -> tuple[str, nn.ModuleList]:
    stacks = [(n, m) for n, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0
              and not set(n.split(".")) & set(_FEATURE_ENCODER_NAMES)]  # not wav2vec2's list of conv layers
    if not stacks:
        raise ModelSourceError(f"{type(base).__name__} has no stack of layers (an nn.ModuleList of blocks), so its layers "
                               "cannot be grouped for freezing and per-layer learning rates; use a transformer "
                               "encoder/decoder model (BERT, Llama, T5 families)")
    return max(stacks, key=lambda item: len(item[1]))


# Modules of an audio model's convolutional feature encoder, and a parameter that stands in for
# masked frames (wav2vec2's SpecAugment `masked_spec_embed`): the input side of the blocks.
_FEATURE_ENCODER_NAMES = ("conv1", "conv2", "embed_positions", "feature_extractor", "feature_projection", "pos_conv_embed")
_FEATURE_ENCODER_PARAMS = ("masked_spec_embed",)


def _feature_encoder(base: nn.Module, blocks: nn.ModuleList, prefix: str, claimed: set[int]) -> list[LayerGroup]:
    """[the "stem" group] of an audio encoder, or [] when the base has no such modules."""
    in_blocks = {id(m) for m in blocks.modules()}
    modules = [(n, m) for n, m in base.named_modules()
               if n.rsplit(".", 1)[-1] in _FEATURE_ENCODER_NAMES and id(m) not in in_blocks]
    if not modules:
        return []
    params = []
    for name, module in modules:
        params += [(f"{prefix}{name}.{n}", p) for n, p in module.named_parameters() if id(p) not in claimed]
        claimed.update(id(p) for _, p in params)
    for name, param in base.named_parameters(recurse=False):
        if name in _FEATURE_ENCODER_PARAMS:
            params.append((prefix + name, param))
            claimed.add(id(param))
    return [LayerGroup("stem", [m for _, m in modules], params)]


def _embeddings(base: nn.Module) -> tuple[str, nn.Module] | None:
    for name in ("embeddings", "embed_tokens", "wte", "shared"):
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return name, module
    return None


def _prefix_of(model: nn.Module, base: nn.Module) -> str:
    if base is model:
        return ""
    for name, module in model.named_modules():
        if module is base:
            return name + "."
    return ""
