"""A stored answer: the stream's chunks as they arrived and its terminal event, as one compact JSON value."""

from __future__ import annotations

import json
from dataclasses import dataclass

from gateway.schema import Finished, TextDelta, TokenLogprob, TopLogprob, Usage
from services.common.finish_reason import FinishReason

ENTRY_VERSION = 2  # 2: logprobs carry each token's bytes (hex)


class EntryError(ValueError):
    """A stored value that cannot be read back (another version, or corrupt): treated as a miss."""


@dataclass(frozen=True, slots=True)
class CachedResult:
    chunks: tuple[TextDelta, ...]
    finished: Finished

    def encode(self) -> bytes:
        """Latency is left out: a replay spends none of the original's time."""
        chunks = [
            [d.text, list(d.token_ids),
             [[lp.token_id, lp.logprob, lp.text,
               [[t.token_id, t.logprob, t.text, t.token_bytes.hex()] for t in lp.top], lp.token_bytes.hex()]
              for lp in d.logprobs],
             d.num_prompt_tokens]
            for d in self.chunks
        ]
        f, u = self.finished, self.finished.usage
        done = [int(f.finish_reason), u.prompt_tokens, u.completion_tokens, u.cached_tokens, f.stop_string]
        return json.dumps({"v": ENTRY_VERSION, "chunks": chunks, "done": done}, ensure_ascii=False,
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> CachedResult:
        try:
            obj = json.loads(raw)
            if obj.get("v") != ENTRY_VERSION:
                raise EntryError(f"stored entry has version {obj.get('v')!r}, expected {ENTRY_VERSION}")
            chunks = tuple(
                TextDelta(text, tuple(ids),
                          tuple(TokenLogprob(tid, lp, txt,
                                             tuple(TopLogprob(t, p, x, bytes.fromhex(h)) for t, p, x, h in top),
                                             bytes.fromhex(raw_hex))
                                for tid, lp, txt, top, raw_hex in logprobs),
                          num_prompt)
                for text, ids, logprobs, num_prompt in obj["chunks"]
            )
            reason, prompt, completion, cached, stop_string = obj["done"]
            finished = Finished(FinishReason(reason), Usage(prompt, completion, cached), stop_string=stop_string)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise EntryError(f"stored entry cannot be read: {exc}") from exc
        return cls(chunks, finished)
