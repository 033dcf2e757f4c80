"""Pieces the generating tasks (causal-lm, seq2seq) share: padding id lists and decoding outputs.

Generated ids travel through evaluation as floats in the task's output rows, -1 after the end, so
batches of different lengths stack; `decode` turns them back into text.
"""

from __future__ import annotations

import math

import numpy as np
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


def decode(tokenizer, generated: np.ndarray) -> list[str]:
    """Text of each row of generated ids (negative entries, the padding after the end, dropped)."""
    return [tokenizer.decode([int(t) for t in row if t >= 0], skip_special_tokens=True).strip() for row in generated]


def stop_ids(model, tokenizer) -> list[int]:
    """Token ids that end a generated answer: the model's configured EOS ids and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*configured, tokenizer.eos_token_id] if i is not None})


def cut_at_stop(new: torch.Tensor, stops: list[int], length: int) -> torch.Tensor:
    """Generated ids (B, T) as floats (B, length): -1 from the first stop id on, and as padding."""
    ended = torch.isin(new, torch.tensor(stops, device=new.device)).cumsum(1) > 0
    new = new.masked_fill(ended, -1)
    return torch.nn.functional.pad(new, (0, length - new.shape[1]), value=-1).float()


def token_loss(outputs: np.ndarray) -> dict[str, float]:
    """Mean loss per target token and its perplexity, from output rows [loss sum, tokens, ...]."""
    tokens = float(outputs[:, 1].sum())
    loss = float(outputs[:, 0].sum()) / max(tokens, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "target_tokens": int(tokens)}
