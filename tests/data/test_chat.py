"""Chat data: prompt/response cells that are not text are refused, not stringified."""

from __future__ import annotations

import pandas as pd
import pytest

from tunesmith.data.chat import read_chats
from tunesmith.errors import DataError


def test_a_jsonl_prompt_that_is_a_list_is_refused(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text('{"prompt": "hi", "response": "hello"}\n{"prompt": ["a", "b"], "response": "x"}\n')
    with pytest.raises(DataError, match=r"chat.jsonl, line 2: 'prompt' holds a JSON list \(\[\"a\", \"b\"\]\), not text"):
        read_chats(path, "messages", "prompt", "response", True, "skip")


def test_a_parquet_response_that_is_a_list_is_refused(tmp_path):
    path = tmp_path / "chat.parquet"
    pd.DataFrame({"prompt": ["hi", "yo"], "response": [["a"], ["b"]]}).to_parquet(path)
    with pytest.raises(DataError, match=r"column 'response' does not hold text or numbers: its Parquet type is list"):
        read_chats(path, "messages", "prompt", "response", True, "skip")
