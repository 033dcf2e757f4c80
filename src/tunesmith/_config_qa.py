"""Config section `question_answering`: where the questions are, and how answers are picked.

It lives here only to keep `tunesmith.config` within its size budget (like `_config_llm.py`);
`RunConfig` includes it and the config reference is generated from its docstrings.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class QuestionAnsweringConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    question_column: str = "question"
    """JSONL key of the question (the official SQuAD `.json` layout has fixed keys)."""
    context_column: str = "context"
    """JSONL key of the passage the answer is taken from."""
    answers_column: str = "answers"
    """JSONL key of the gold answers: `{"text": [...], "answer_start": [...]}` (character offsets
    into the context; without `answer_start` the text is looked up), empty for unanswerable."""
    id_column: str = "id"
    """JSONL key of the question id, kept in predictions (the line number when absent)."""
    doc_stride: int | None = Field(None, gt=0)
    """A context longer than `data.max_length` is read in overlapping windows; this many tokens of
    each window repeat in the next one. `null`: a third of `data.max_length` (128 for 384)."""
    max_answer_length: int = Field(30, gt=0)
    """Longest answer, in tokens, that is ever predicted."""
    n_best: int = Field(20, gt=0)
    """Start and end positions tried per window (the highest-scoring this many of each)."""
    null_score_threshold: float = 0.0
    """Unanswerable questions (SQuAD 2.0 style, when the data has any): answer nothing when the
    no-answer score beats the best span's score by more than this (raise it to answer more often)."""
