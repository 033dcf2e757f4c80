"""Character caps applied to user text before it is tokenized, so one huge cell costs no more than a long one.

A tokenizer called with `truncation=True` still tokenizes the whole string and cuts afterwards: one
20 MB cell took 3.7 GB and 74 s, a 200 MB cell about 30 GB. Every task that tokenizes user text
first cuts it to `CHARS_PER_TOKEN` characters per token of the limit, and counts a cut row as
truncated (it is: it would have reached the token limit anyway, see below).

Why 64 characters per token: English prose averages 4-5 characters per WordPiece/BPE token and
the longest entry in a BERT vocabulary is 18 characters, so a text cut at 64 characters per token
still fills the token limit unless its tokens average more than 64 characters, which only long
runs of whitespace or "words" of over 100 characters (a single `[UNK]` in BERT) do. Those rows
are cut earlier than the tokenizer would cut them, and counted. Question-answering contexts are
read in windows, so they are only capped at `MAX_CONTEXT_CHARS` (hundreds of windows).
"""

from __future__ import annotations

CHARS_PER_TOKEN = 64
MAX_CONTEXT_CHARS = 1_000_000  # ~250k tokens: about 500 windows of 512 tokens per question


def char_limit(max_tokens: int) -> int:
    """The characters kept for a text that may become at most `max_tokens` tokens."""
    return max(1, max_tokens) * CHARS_PER_TOKEN


def cap_texts(texts: list[str], limit: int) -> tuple[list[str], list[bool]]:
    """`texts` with each cut to `limit` characters, and whether each was cut."""
    cut = [len(text) > limit for text in texts]
    return [text[:limit] if c else text for text, c in zip(texts, cut)], cut


def cap_words(sentences: list[list[str]], limit: int) -> tuple[list[list[str]], list[bool]]:
    """Each word list cut where its characters (words plus one space each) pass `limit`, a single
    over-long word cut to the characters left; and whether each sentence was cut."""
    capped, cut = [], []
    for words in sentences:
        if sum(len(w) + 1 for w in words) <= limit:
            capped.append(words)
            cut.append(False)
            continue
        kept, used = [], 0
        for word in words:
            if used + len(word) + 1 > limit:
                if used < limit:
                    kept.append(word[: limit - used])
                break
            kept.append(word)
            used += len(word) + 1
        capped.append(kept or [words[0][:limit]])
        cut.append(True)
    return capped, cut
