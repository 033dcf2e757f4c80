"""LoRA, DoRA and QLoRA with peft: wrap the task's model in adapters, restore and merge them.

`apply_lora` runs once, right after the task builds its model, so every transformer task gets it
the same way: the backbone is frozen, low-rank adapters are injected into the target linear layers,
and a newly initialized task head (a classifier) stays fully trainable (peft's `modules_to_save`).
Layer groups see through the wrapper (models/layer_groups.py): each adapter belongs to the group of
the module it wraps, so freezing, gradual unfreezing and `layer_lr_decay` act on adapters as on
weights. `best/` holds the adapter as peft saves it; `merge_best` writes `best/merged/`, the model
with the adapter folded into its weights, after checking that both give the same outputs.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tunesmith.config import RunConfig
from tunesmith.errors import CheckpointError, ConfigError, ExportError

if TYPE_CHECKING:
    from tunesmith.tasks import Task

log = logging.getLogger("tunesmith")

# Default target layers per `model_type`; other models fall back on their layer names, then peft's table.
DEFAULT_TARGETS = {
    "bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"], "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"], "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
# The peft task type from the class name of the model the task built.
TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForTokenClassification": "TOKEN_CLS",
              "ForQuestionAnswering": "QUESTION_ANS", "ForCausalLM": "CAUSAL_LM",
              "ForConditionalGeneration": "SEQ_2_SEQ_LM", "EncoderDecoderModel": "SEQ_2_SEQ_LM",
              "ForAudioClassification": "SEQ_CLS", "ForCTC": "CTC"}
# peft 0.21's PeftModelForQuestionAnswering does not pass `token_type_ids` on to the model, so a BERT-like
# reader would train blind to which tokens are the question (and its merged model would answer differently);
# these task types get the generic PeftModel, which passes every input through.
GENERIC_PEFT = {"QUESTION_ANS", "CTC"}
# peft's task wrappers pass `input_ids` on to the model, which audio models (Whisper's log-mel
# `input_features`, wav2vec2's `input_values`) do not take: they get the generic PeftModel too.
AUDIO_INPUTS = {"input_features", "input_values"}
# A new head's module names: trained in full next to the adapters (and saved with them). A CTC head
# (`lm_head`, sized to the new vocabulary) is one too.
HEAD_MODULES = ("classifier", "score", "qa_outputs", "projector")


def check_lora(config: RunConfig) -> None:
    """Rejects LoRA settings this machine cannot run, before any weights load.

    Raises:
        ConfigError: QLoRA without bitsandbytes or without a CUDA GPU, or outside causal-lm.
    """
    lora = config.lora
    if not lora.enabled or lora.quantization == "none":
        return
    problems = []
    if config.task != "causal-lm":
        problems.append(f"lora.quantization: {lora.quantization!r} is supported for task causal-lm only; "
                        "set lora.quantization: none")
    if importlib.util.find_spec("bitsandbytes") is None:
        problems.append(f"lora.quantization: {lora.quantization!r} (QLoRA) needs bitsandbytes; "
                        "install it with: pip install bitsandbytes (or set lora.quantization: none)")
    if not torch.cuda.is_available():
        problems.append(f"lora.quantization: {lora.quantization!r} (QLoRA) needs a CUDA GPU and none is visible; "
                        "set lora.quantization: none to train LoRA on the full-precision model")
    if problems:
        raise ConfigError(problems)


def quantization_kwargs(config: RunConfig) -> dict[str, Any]:
    """`from_pretrained` arguments that load the backbone quantized for QLoRA (empty otherwise)."""
    lora = config.lora
    if not lora.enabled or lora.quantization == "none":
        return {}
    from transformers import BitsAndBytesConfig

    if lora.quantization == "8bit":
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)}


def apply_lora(model: nn.Module, config: RunConfig) -> nn.Module:
    """The task's model wrapped in adapters under `lora.enabled` (returned unchanged otherwise).

    Raises:
        ConfigError: the model is not a transformer peft can adapt, or `lora.target_modules`
            names no layer of it.
    """
    if not config.lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = config.lora
    task_type = next((t for suffix, t in TASK_TYPES.items() if type(model).__name__.endswith(suffix)), None)
    if task_type is None:
        raise ConfigError([f"lora.enabled: the {config.task} task's model ({type(model).__name__}) is not a "
                           "transformer that peft can adapt; set lora.enabled: false"])
    targets = lora.target_modules or default_targets(model)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if not set(targets) & names:
        raise ConfigError([f"lora.target_modules: none of {targets} is a layer of {type(model).__name__}; "
                           f"linear layers found: {', '.join(sorted(_linear_names(model)))}"])
    heads = [n for n in HEAD_MODULES + (("lm_head",) if task_type == "CTC" else ())
             if task_type not in ("CAUSAL_LM", "SEQ_2_SEQ_LM") and isinstance(getattr(model, n, None), nn.Module)]
    generic = task_type in GENERIC_PEFT or getattr(model, "main_input_name", None) in AUDIO_INPUTS
    if type(model).__name__ == "EncoderDecoderModel":  # warm-started: its cross-attention is new, so it trains in full
        heads.append("crossattention")
    if lora.quantization != "none":
        model = prepare_model_for_kbit_training(model)
    peft_config = LoraConfig(task_type=None if generic else task_type, r=lora.r,
                             lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft hints int; it only divides by r
                             lora_dropout=lora.dropout, target_modules=targets, use_dora=lora.method == "dora",
                             modules_to_save=heads or None)
    with warnings.catch_warnings():  # peft calls a transformers property deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, peft_config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("%s on %s: %d of %d parameters train (%.2f%%)", lora.method, ", ".join(targets), trainable, total,
             100 * trainable / max(total, 1))
    return model


def default_targets(model: nn.Module) -> list[str]:
    """Target layers for a model: by `model_type`, else by layer names, else peft's own table.

    Raises:
        ConfigError: none of these finds the model's attention layers.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    names = _linear_names(model)
    # Llama-style blocks; fairseq-style ones (Whisper, wav2vec2, BART: q/k/v_proj and out_proj), as
    # their LoRA recipes adapt them; BERT-style ones.
    for candidates in (["q_proj", "k_proj", "v_proj", "o_proj"], ["q_proj", "v_proj"], ["query", "value"]):
        if set(candidates) <= names:
            return candidates
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_table

    if model_type in peft_table:
        return list(peft_table[model_type])
    raise ConfigError([f"lora.target_modules: no default for model type {model_type!r}; name the layers to adapt, "
                       f"e.g. [{', '.join(sorted(names)[:4])}] (linear layers found: {', '.join(sorted(names))})"])


def _linear_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def restore_adapter(model: nn.Module, folder: Path) -> None:
    """Loads the adapter (and trained head) saved in `folder` into a peft model with the same adapters."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result: Any = set_peft_model_state_dict(  # torch's _IncompatibleKeys; peft leaves it unannotated
        model, load_file(str(folder / "adapter_model.safetensors")))
    if result.unexpected_keys:
        raise CheckpointError(f"{folder}: the best adapter does not match the trained model (unexpected keys "
                              f"{result.unexpected_keys[:5]}); best/ was written by another run or config")


def load_adapter(model: nn.Module, folder: Path) -> nn.Module:
    """The base `model` wrapped in the adapter saved in `folder` (a run's `best/`)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(folder))


def merge_on_validation(task, model: nn.Module, best: Path, rows: int = 8) -> dict[str, Any]:
    """Writes `best/merged/` from a LoRA model holding the best adapter, checked on `rows` validation rows."""
    data = task.dataset(task.eval_rows.subset(list(range(min(rows, len(task.eval_rows))))), train=False)
    return merge_best(model, task, task.collate(data), best)


@torch.no_grad()
def merge_best(model: nn.Module, task: Task, batch: dict[str, torch.Tensor], folder: Path, tolerance: float = 1e-4) -> dict[str, Any]:
    """Writes `folder/merged`: the adapter folded into the weights, saved as the task saves a model.

    The merged and the adapter model are scored by the task on `batch` (real validation rows) first,
    as its evaluation scores them (an audio model's cropped encoder included): the loss and every
    float output (logits, per-row loss sums). The largest absolute difference is returned, logged
    and stored in `merge_check.json`.

    Raises:
        ExportError: the outputs differ by more than `tolerance` (nothing is written then).
    """
    from tunesmith.engine.checkpoint import atomic_folder

    model.eval()
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    adapter_out = _scores(*task.loss(model, batch))
    merged = copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module
    merged_out = _scores(*task.loss(merged, batch))
    diff = float((adapter_out - merged_out).abs().max())
    scale = float(adapter_out.abs().max())
    rows = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
    check = {"max_abs_diff": diff, "max_abs_output": scale, "rows": int(rows),
             "tolerance": tolerance, "passed": diff <= tolerance * max(1.0, scale)}
    if not check["passed"]:
        raise ExportError(f"merged model differs from the adapter model by {diff:.3g} (tolerance {tolerance:g}); "
                          f"{folder / 'merged'} was not written")
    with atomic_folder(folder / "merged") as tmp:
        task.save(merged, str(tmp))
        (tmp / "merge_check.json").write_text(json.dumps(check, indent=1), encoding="utf-8")
    log.info("merged the adapter into %s; outputs match the adapter model (max abs difference %.2e on %d rows)",
             folder / "merged", diff, check["rows"])
    return check


def _scores(loss: torch.Tensor, outputs: Any) -> torch.Tensor:
    """The loss and every float tensor among a task's evaluation outputs (a tensor or a dict of them), flat."""
    found = outputs.values() if isinstance(outputs, dict) else [outputs]
    tensors = [t for t in found if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return torch.cat([loss.detach().float().reshape(1)] + [t.detach().float().flatten() for t in tensors])
