"""Incremental detokenization: token ids arrive a few at a time, text leaves in whole characters.

Each stream keeps two offsets into its token ids. `prefix_offset` starts a small window of tokens
whose text was already sent and that gives the decoder its context (leading-space rules of Metaspace
and Strip decoders, byte groups); `read_offset` marks where sent text ends. Each step decodes
`tokens[prefix:]` once and sends what follows the known text of `tokens[prefix:read]`, but only when
the new text is settled:
- it does not end in U+FFFD (a multi-byte character still incomplete at the end comes out as U+FFFD);
- the last token is not a `<0xNN>` byte-fallback token: the ByteFallback decoder turns a whole run
  of byte tokens into U+FFFDs when the run as a whole is not valid UTF-8, so a later byte token can
  change the text of earlier ones.
Otherwise the text waits for the next token (or for `flush` at the end). Sent deltas therefore
concatenate to the full decode of all tokens, byte for byte.

Offsets only move to points where the text was settled, which makes the text before and after them
independent. The window is moved forward once it exceeds MAX_WINDOW tokens, so each step decodes a
few tokens, not the whole output. Many streams are decoded together with one `decode_batch` call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tokenizers import Tokenizer

REPLACEMENT_CHAR = "\ufffd"
MAX_WINDOW = 4  # tokens decoded again per step at most, plus the new ones (decode cost grows with it)


@dataclass(slots=True)
class IncrementalDetokenizer:
    """Detokenizer state of one stream (its token ids and the two offsets)."""

    skip_special_tokens: bool = False
    byte_token_ids: frozenset[int] = frozenset()  # <0xNN> ids of a byte-fallback model
    special_token_ids: frozenset[int] = frozenset()  # dropped before decoding when skip_special_tokens
    token_ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0
    prefix_len: int | None = 0  # len(decode(tokens[prefix:read])); None until decoded after a move
    last_settled: int = 0  # the read offset before the latest one: a point where the text was settled

    def needs_prefix_decode(self) -> bool:
        return self.prefix_len is None

    def _settled(self, text: str) -> bool:
        return not text.endswith(REPLACEMENT_CHAR) and self.token_ids[-1] not in self.byte_token_ids

    def advance(self, text: str, prefix_text: str | None = None) -> str:
        """Takes decode(tokens[prefix:]) (and decode(tokens[prefix:read]) when the prefix was moved);
        returns the text to send now."""
        if prefix_text is not None:
            self.prefix_len = len(prefix_text)
        if self.prefix_len is None:
            raise ValueError("the prefix window moved: pass its decoded text")
        if not self.token_ids or not self._settled(text):
            return ""
        delta = text[self.prefix_len:]
        self.last_settled, self.read_offset = self.read_offset, len(self.token_ids)
        self.prefix_len = len(text)
        self._maybe_move_window()
        return delta

    def _maybe_move_window(self) -> None:
        start = self.last_settled
        if self.read_offset - self.prefix_offset <= MAX_WINDOW or start <= self.prefix_offset:
            return
        # A window may not start on a token the decoder never sees: a dropped special token would let
        # the next token lose a leading space that the full decode keeps.
        if self.skip_special_tokens and self.token_ids[start] in self.special_token_ids:
            return
        self.prefix_offset = start
        self.prefix_len = None

    def flush_text(self, text: str, prefix_text: str | None = None) -> str:
        """At the end of a stream: everything not sent yet, settled or not."""
        if prefix_text is not None:
            self.prefix_len = len(prefix_text)
        delta = text[self.prefix_len or 0:]
        self.read_offset = self.prefix_offset = self.last_settled = len(self.token_ids)
        self.prefix_len = 0
        return delta


def _decode_groups(
    tokenizer: Tokenizer, jobs: Sequence[tuple[IncrementalDetokenizer, bool]]
) -> list[tuple[str, str | None]]:
    """For each (state, _), decode(tokens[prefix:]) and, if needed, decode(tokens[prefix:read]); batched
    into one decode_batch call per skip_special_tokens value."""
    results: list[tuple[str, str | None]] = [("", None)] * len(jobs)
    for skip in (False, True):
        windows: list[list[int]] = []
        slots: list[tuple[int, bool]] = []
        for i, (det, _) in enumerate(jobs):
            if det.skip_special_tokens != skip:
                continue
            windows.append(det.token_ids[det.prefix_offset:])
            slots.append((i, False))
            if det.prefix_len is None:
                windows.append(det.token_ids[det.prefix_offset:det.read_offset])
                slots.append((i, True))
        if not windows:
            continue
        texts = tokenizer.decode_batch(windows, skip_special_tokens=skip)
        for (i, is_prefix), text in zip(slots, texts):
            full, prefix = results[i]
            results[i] = (full, text) if is_prefix else (text, prefix)
    return results


def detokenize_step(
    tokenizer: Tokenizer, updates: Iterable[tuple[IncrementalDetokenizer, Sequence[int]]]
) -> list[str]:
    """Appends each stream's new token ids and returns each stream's text delta, decoding all at once."""
    jobs = []
    for det, new_ids in updates:
        det.token_ids.extend(new_ids)
        jobs.append((det, bool(new_ids)))
    texts = _decode_groups(tokenizer, [j for j in jobs if j[1]])
    deltas: list[str] = []
    it = iter(texts)
    for det, has_new in jobs:
        if not has_new:
            deltas.append("")
            continue
        full, prefix = next(it)
        deltas.append(det.advance(full, prefix))
    return deltas


def detokenize_flush(tokenizer: Tokenizer, det: IncrementalDetokenizer) -> str:
    """The text a finished stream still holds back."""
    if det.read_offset == len(det.token_ids):
        return ""
    full, prefix = _decode_groups(tokenizer, [(det, True)])[0]
    return det.flush_text(full, prefix)
