"""Live translation sessions: segments arrive as the speaker goes and are translated one after another.

Each segment's request holds the session's earlier segments and their translations ahead of the new segment, as
a chat (or, for a model without a chat template, as a plain prompt of labelled lines). Consecutive requests then
share everything but their tail, so the scheduler's prefix cache serves the shared part and a segment costs the
prefill of its own tokens. History is trimmed by halves, not one segment at a time: dropping the oldest segment
on every request would change the first message after the instruction each time and miss the cache from there.

No gRPC here: the servicer turns the first segment into `TranslationSettings`, then feeds each segment's text to
`TranslationSession.translate` and streams the events it yields (text deltas, then one `Finished`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from gateway.core import GatewayCore
from gateway.errors import RequestError
from gateway.schema import ChatTurn, Event, GenerationRequest, TextDelta, TranslationSettings

DEFAULT_MAX_HISTORY = 16  # earlier segments kept ahead of a new one; trimmed to half of it when exceeded
PLAIN_STOP = "\n\n"  # a plain-prompt translation ends at the blank line that separates pairs


class TranslationSession:
    """One speaker's session: `translate` each segment in order; the session remembers the translations."""

    def __init__(self, core: GatewayCore, settings: TranslationSettings, tenant: str = "",
                 max_history: int = DEFAULT_MAX_HISTORY) -> None:
        if not settings.target_language.strip():
            raise RequestError("the first segment must name target_language", "target_language")
        if max_history < 2:
            raise ValueError(f"max_history must be at least 2, got {max_history}")
        self._core = core
        self._tenant = tenant
        self.settings = settings
        self.max_history = max_history
        self.card = core.resolve_model(settings.model)  # raises for an unknown model before any segment runs
        self.history: list[tuple[str, str]] = []  # (segment, translation), oldest first
        self.num_segments = 0

    def check_segment(self, text: str, model: str = "", source_language: str = "", target_language: str = "") -> None:
        """A later segment may repeat the first one's model and languages but not change them; its text must not
        be empty."""
        index = self.num_segments
        if not text.strip():
            raise RequestError(f"segment {index} has no text", "text")
        s = self.settings
        for name, value, fixed in (("model", model, self.card.id), ("source_language", source_language,
                                                                      s.source_language),
                                   ("target_language", target_language, s.target_language)):
            if value and value != fixed:
                raise RequestError(f"segment {index} sets {name} to {value!r} where the session's first segment "
                                   f"set {fixed!r}; start a new session to change it", name)

    def request_for(self, text: str) -> GenerationRequest:
        """The generation request that translates `text` after the session's history."""
        s = self.settings
        common = {"model": self.card.id, "sampling": s.sampling, "priority": s.priority, "timeout_s": s.timeout_s,
                  "bypass_cache": s.bypass_cache}
        if self.card.has_chat_template:
            return GenerationRequest(messages=self._messages(text), options=s.options, **common)  # type: ignore[arg-type]
        options = dataclasses.replace(s.options, stop=(*s.options.stop, PLAIN_STOP), add_special_tokens=True)
        return GenerationRequest(prompt=self._plain_prompt(text), options=options, **common)  # type: ignore[arg-type]

    def _messages(self, text: str) -> tuple[ChatTurn, ...]:
        s = self.settings
        source = f"{s.source_language} " if s.source_language else ""
        turns = [ChatTurn("system", f"Translate the {source}text the user sends into {s.target_language}. "
                                    "Reply with the translation alone.")]
        for segment, translation in self.history:
            turns += [ChatTurn("user", segment), ChatTurn("assistant", translation)]
        return (*turns, ChatTurn("user", text))

    def _plain_prompt(self, text: str) -> str:
        s = self.settings
        source = s.source_language or "Source"
        header = f"Translate {s.source_language} to {s.target_language}." if s.source_language else \
            f"Translate into {s.target_language}."
        pairs = "".join(f"{source}: {segment}\n{s.target_language}: {translation.strip()}{PLAIN_STOP}"
                        for segment, translation in self.history)
        return f"{header}{PLAIN_STOP}{pairs}{source}: {text}\n{s.target_language}:"

    async def translate(self, text: str, time_limit_s: float | None = None) -> AsyncIterator[Event]:
        """Streams the translation of `text`: text deltas, then one `Finished`. Failures raise FlashStreamError
        and leave the history as it was; closing the iterator early aborts the segment upstream."""
        generation = self._core.start(self.request_for(text), time_limit_s=time_limit_s, tenant=self._tenant)
        parts: list[str] = []
        try:
            async for event in generation:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                yield event
        finally:
            generation.close()
        self._remember(text, "".join(parts))

    def _remember(self, segment: str, translation: str) -> None:
        self.num_segments += 1
        self.history.append((segment, translation))
        if len(self.history) > self.max_history:
            del self.history[: len(self.history) - self.max_history // 2]
