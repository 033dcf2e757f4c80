"""Chat data for causal-LM instruction tuning: read conversations, render them, mark the responses.

A row is a chat (`messages`: a list of `{role, content}`) or a prompt/response pair, which becomes
a one-turn chat. The last assistant message is the reference answer (`LabelledRows.labels`); the
messages before it are the prompt (`inputs["messages"]`). Rendering uses the tokenizer's own chat
template; the text is cut into segments at each assistant response and tokenized segment by
segment, so the prompt tokens are exactly those the model sees when it generates, and only
response tokens (with the end-of-turn/EOS token that teaches the model to stop) carry a loss.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tunesmith.data.labelled import LabelledRows
from tunesmith.data.readers import jsonl_objects, not_found, read_table, require_text
from tunesmith.errors import DataError

log = logging.getLogger("tunesmith")
ROLES = ("system", "user", "assistant", "tool")


def read_chats(path: str | Path, messages_key: str, prompt_key: str, response_key: str, labelled: bool,
               bad_rows: str) -> LabelledRows:
    """Reads chats (JSONL) or prompt/response rows (JSONL, CSV, TSV, Parquet).

    Raises:
        DataError: a row with neither key, a malformed message, a chat not ending in an assistant
            message (when labelled), or no usable rows; each names the file, line and key.
    """
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        if not path.is_file():
            raise DataError(not_found(path))
        records = jsonl_objects(path)
    else:
        frame = read_table(path)
        require_text(frame, [k for k in (prompt_key, response_key) if k in frame.columns], path)
        records = [(int(i), row.to_dict()) for i, row in frame.iterrows()]
    prompts, answers, lines, skipped = [], [], [], 0
    for number, row in records:
        _require_text_cells(path, number, row, (prompt_key, response_key))
        try:
            messages = _messages(row, messages_key, prompt_key, response_key, labelled)
        except ValueError as exc:
            if bad_rows == "error":
                raise DataError(f"{path}, line {number}: {exc}; fix the row or set data.bad_rows: skip") from None
            if not skipped:
                log.warning("%s, line %d: %s; skipping this row and others like it (data.bad_rows: skip)", path, number, exc)
            skipped += 1
            continue
        answer = messages.pop()["content"] if labelled else ""
        prompts.append(messages)
        answers.append(answer)
        lines.append(number)
    if skipped:
        log.warning("%s: skipped %d of %d rows", path, skipped, len(records))
    if not prompts:
        raise DataError(f"{path}: no usable rows; each line needs {messages_key!r} (a list of {{role, content}}) or "
                        f"{prompt_key!r} and {response_key!r} (set causal_lm.messages_column / prompt_column / "
                        "response_column to your keys)")
    return LabelledRows(str(path), {"messages": prompts}, answers, lines, skipped=skipped)


def _require_text_cells(path: Path, number: int, row: dict, keys: tuple[str, ...]) -> None:
    """A JSONL prompt or response that is a list or object would be trained on as its Python spelling."""
    for key in keys:
        if isinstance(row.get(key), (list, dict)):
            kind = "a JSON list" if isinstance(row[key], list) else "a JSON object"
            raise DataError(f"{path}, line {number}: {key!r} holds {kind} ({json.dumps(row[key])[:60]}), not text; "
                            "give the prompt and response as strings, or a chat as a list of {role, content} "
                            "messages under the messages key (causal_lm.messages_column)")


def _messages(row: dict, messages_key: str, prompt_key: str, response_key: str, labelled: bool) -> list[dict]:
    if messages_key in row:
        messages = row[messages_key]
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{messages_key!r} must be a non-empty list of {{role, content}} objects")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"{messages_key!r}: each message needs a role ({', '.join(ROLES)}) and text content, got {m!r}")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    elif str(row.get(prompt_key) or "").strip():
        messages = [{"role": "user", "content": str(row[prompt_key])}]
        if labelled or str(row.get(response_key) or "").strip():
            messages.append({"role": "assistant", "content": str(row.get(response_key) or "")})
    else:
        raise ValueError(f"neither {messages_key!r} nor a non-empty {prompt_key!r} key")
    if labelled and (messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip()):
        raise ValueError("the last message must be a non-empty assistant reply (the reference answer)")
    if not labelled and messages[-1]["role"] == "assistant":
        messages.pop()  # predicting: the model writes the reply
    return messages


def segments(tokenizer: Any, prompt: list[dict], answer: str | None) -> list[tuple[str, bool]]:
    """The rendered chat as (text, is_response) pieces; with `answer=None`, the prompt to generate from.

    With a chat template, each assistant turn's text is what the template adds after the
    generation prompt; without one, turns are joined by newlines and the answer ends in EOS.
    """
    eos = tokenizer.eos_token or ""
    if not getattr(tokenizer, "chat_template", None):
        text = "\n".join(m["content"] for m in prompt) + "\n"
        return [(text, False)] if answer is None else [(text, False), (answer + eos, True)]
    render = lambda msgs, gen: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)  # noqa: E731
    if answer is None:
        return [(render(prompt, True), False)]
    chat = prompt + [{"role": "assistant", "content": answer}]
    full, pieces, done = render(chat, False), [], 0
    for j, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        before, after = render(chat[:j], True), render(chat[: j + 1], False)
        if not (after.startswith(before) and full.startswith(after) and len(before) >= done):
            if j != len(chat) - 1:
                continue  # a template that rewrites earlier turns: train on the last answer only
            raise DataError("the tokenizer's chat template does not render a chat as its prompt followed by the "
                            "reply, so the reply tokens cannot be found; use a model whose template does")
        pieces += [(full[done:len(before)], False), (full[len(before):len(after)], True)]
        done = len(after)
    if full[done:]:
        pieces.append((full[done:], False))
    last = max(i for i, (_, is_response) in enumerate(pieces) if is_response)
    if eos and eos not in pieces[last][0]:
        pieces[last] = (pieces[last][0] + eos, True)  # the model must learn to stop
    return [(text, is_response) for text, is_response in pieces if text]
