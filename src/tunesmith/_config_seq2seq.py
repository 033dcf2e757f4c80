"""Config section `seq2seq`: source/target columns, target length and how answers are generated.

It lives here only to keep `tunesmith.config` within its size budget (like `_config_llm.py`);
`RunConfig` includes it and the config reference is generated from its docstrings.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Seq2SeqConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    source_column: str = "source"
    """Column (CSV/TSV/Parquet) or key (JSONL) of the input text; `data.max_length` caps its tokens."""
    target_column: str = "target"
    """Column or key of the output text the model learns to write."""
    source_prefix: str = ""
    """Text put before every source, as T5 expects (`"summarize: "`, `"translate English to German: "`)."""
    max_target_length: int = Field(128, gt=0)
    """Longest target in tokens; longer targets are cut for training (and counted)."""
    max_new_tokens: int = Field(64, gt=0)
    """Longest generated output, in tokens, for evaluation and `tunesmith predict`."""
    num_beams: int = Field(1, gt=0)
    """Beam search width for generation (1 = greedy)."""
    generate_on_eval: bool = True
    """At each evaluation also generate an output for every validation row and score `bleu` (sacrebleu)
    and `rouge1`, `rouge2`, `rougeL` against the targets; off scores loss and perplexity only."""
