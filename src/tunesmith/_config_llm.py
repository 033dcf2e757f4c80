"""Config sections `lora` (parameter-efficient fine-tuning with peft) and `causal_lm`.

They live here only to keep `tunesmith.config` within its size budget (like `_config_search.py`);
`RunConfig` includes them and the config reference is generated from their docstrings like every
other section. The rules that need the installed hardware (QLoRA) are checked in
`tunesmith.strategies.lora.check_lora` before any weights load.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    # The same rules as the sections in tunesmith.config.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class LoraConfig(_Section):
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


class CausalLMConfig(_Section):
    messages_column: str = "messages"
    """JSONL key of a chat (a list of `{role, content}`); the last assistant message is the reference answer."""
    prompt_column: str = "prompt"
    """Key of the prompt in prompt/response rows (used when a row has no `messages_column`)."""
    response_column: str = "response"
    """Key of the response in prompt/response rows."""
    packing: bool = False
    """Pack each training batch into one row without padding; position ids restart at every
    example, so attention never crosses examples (same loss as unpacked, less padding computed).
    Packed batches are drawn at random, not grouped by length: grouping would pack the longest
    rows into one step and raise peak memory."""
    max_new_tokens: int = Field(32, gt=0)
    """Longest generated answer, in tokens, for evaluation and `tunesmith predict`."""
    generate_on_eval: bool = True
    """At each evaluation also generate an answer to every validation prompt (greedy) and score
    `exact_match` against the reference (whitespace and case ignored); off scores loss and perplexity only."""
