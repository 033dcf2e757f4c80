"""Config section `lora`: parameter-efficient fine-tuning with peft, shared by every transformer task.

The rules that need the installed hardware (QLoRA) are checked in
`tunesmith.strategies.lora.check_lora` before any weights load.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunesmith.config._section import Section



class LoraConfig(Section):
    enabled: bool = False
    """Train low-rank adapters (peft) instead of the backbone's weights: the backbone stays frozen,
    a new task head (classifier) stays fully trainable. `best/` then holds the adapter, and
    `best/merged/` the model with the adapter merged in (loads in plain transformers)."""
    method: Literal["lora", "dora"] = "lora"
    """`lora`, or `dora` (weight-decomposed LoRA: also learns a magnitude per output feature)."""
    r: int = Field(8, gt=0)
    """Rank of the low-rank update."""
    alpha: float = Field(16, gt=0)
    """Scaling of the update (`alpha / r` multiplies it)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapter's input."""
    target_modules: list[str] | None = None
    """Names of the linear layers to adapt. `null` picks per architecture: `query, value` for
    BERT-like encoders, `q_proj, k_proj, v_proj, o_proj` for Llama-like decoders."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """QLoRA: load the frozen backbone quantized with bitsandbytes (causal-lm; needs a CUDA GPU
    and `pip install bitsandbytes`)."""
    merge: bool = True
    """After training, merge the adapter into `best/merged/` and check that the merged model's
    outputs equal the adapter model's on validation rows (the largest difference is logged)."""
