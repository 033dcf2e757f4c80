"""Pieces the generating tasks (causal-lm, seq2seq) share: padding id lists and their evaluation outputs.

In evaluation a batch's outputs are a dict of tensors: `loss_sums` and `tokens` (B,) for labelled
batches, and `generated` (B, T) ids, -1 from the end on, when the task generates. `generated_rows`
turns them into one `Generated` record per row, its answer decoded to text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


def padded(rows: list[list[int]], pad_id: int | None, left: bool = False) -> dict[str, torch.Tensor]:
    """Ids and attention mask, (B, longest); left padding puts every prompt's end at the same place."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id or 0, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(longest - len(r), longest) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


@dataclass(frozen=True)
class Generated:
    """One row's evaluation output in a generating task."""

    loss_sum: float
    """Cross-entropy summed over the row's target tokens (0 when the row has no target)."""
    tokens: int
    """Target tokens scored: 0 for an unlabelled row."""
    text: str | None
    """The generated answer; None when the task did not generate."""


def generated_rows(outputs: dict[str, torch.Tensor], tokenizer: Any) -> list[Generated]:
    """One `Generated` per row of a batch's outputs (see the module docstring)."""
    ids = outputs.get("generated")
    texts = decode(tokenizer, ids) if ids is not None else None
    size = len(ids) if ids is not None else len(outputs["tokens"])
    sums = outputs["loss_sums"].tolist() if "loss_sums" in outputs else [0.0] * size
    counts = outputs["tokens"].tolist() if "tokens" in outputs else [0] * size
    return [Generated(float(sums[i]), int(counts[i]), texts[i] if texts is not None else None) for i in range(size)]


def decode(tokenizer: Any, generated: torch.Tensor) -> list[str]:
    """Text of each row of generated ids (negative entries, the padding after the end, dropped)."""
    return [tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True).strip() for row in generated.tolist()]


def stop_ids(model, tokenizer) -> list[int]:
    """Token ids that end a generated answer: the model's configured EOS ids and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*configured, tokenizer.eos_token_id] if i is not None})


def cut_at_stop(new: torch.Tensor, stops: list[int]) -> torch.Tensor:
    """Generated ids (B, T), -1 from the first stop id on."""
    ended = torch.isin(new, torch.tensor(stops, device=new.device)).cumsum(1) > 0
    return new.masked_fill(ended, -1)


def token_loss(outputs: list[Generated]) -> dict[str, float]:
    """Mean loss per target token and its perplexity, over the rows' `Generated` records."""
    tokens = sum(o.tokens for o in outputs)
    loss = sum(o.loss_sum for o in outputs) / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "target_tokens": int(tokens)}
