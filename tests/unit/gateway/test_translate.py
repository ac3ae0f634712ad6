"""TranslationSession without gRPC: the requests it builds, its history, and its errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from gateway.core import GatewayCore
from gateway.errors import ModelNotFound, RequestError
from gateway.schema import ChatTurn, Event, Finished, ModelCard, Submission, TextDelta, TranslationSettings, Usage
from gateway.translate import PLAIN_STOP, TranslationSession
from services.common.errors import FlashStreamError, Unavailable
from services.common.finish_reason import FinishReason
from services.common.metrics import Metrics
from services.common.text_options import TextOptions


@dataclass
class ScriptedHandle:
    """Answers a submission with the events it was given, then nothing."""

    events: list[Event | FlashStreamError]
    aborted: bool = False
    replayed: bool = False

    async def next(self) -> Event | FlashStreamError:
        if not self.events:
            await asyncio.sleep(3600)
        return self.events.pop(0)

    def next_nowait(self) -> Event | FlashStreamError | None:
        return None

    def abort(self) -> None:
        self.aborted = True


@dataclass
class ScriptedRouter:
    """Translates the n-th submission (from 0) as "t<n>" in two deltas, unless `failures` names it."""

    models: list[ModelCard]
    failures: dict[int, FlashStreamError] = field(default_factory=dict)
    ready: bool = True
    submitted: list[Submission] = field(default_factory=list)
    handles: list[ScriptedHandle] = field(default_factory=list)

    def cards(self) -> list[ModelCard]:
        return list(self.models)

    def forward(self, submission: Submission) -> ScriptedHandle:
        n = len(self.submitted)
        self.submitted.append(submission)
        events: list[Event | FlashStreamError] = [self.failures[n]] if n in self.failures else [
            TextDelta("t", (1,)), TextDelta(str(n), (2,)), Finished(FinishReason.EOS, Usage(5, 2, 0))]
        self.handles.append(ScriptedHandle(events))
        return self.handles[-1]


CHAT = ModelCard("chat-model", max_model_len=4096, vocab_size=100)
PLAIN = ModelCard("base-model", max_model_len=4096, vocab_size=100, has_chat_template=False)


def _session(card: ModelCard = CHAT, source: str = "German", max_history: int = 16,
             failures: dict[int, FlashStreamError] | None = None) -> tuple[TranslationSession, ScriptedRouter]:
    router = ScriptedRouter([card], failures or {})
    core = GatewayCore(router, Metrics("gateway"))
    settings = TranslationSettings(model="", target_language="English", source_language=source)
    return TranslationSession(core, settings, max_history=max_history), router


async def _run(session: TranslationSession, text: str) -> list[Event]:
    return [event async for event in session.translate(text)]


def test_each_segment_is_a_chat_holding_the_earlier_segments_and_their_translations() -> None:
    async def main() -> None:
        session, router = _session()
        first = await _run(session, "Guten Morgen.")
        assert first[:2] == [TextDelta("t", (1,)), TextDelta("0", (2,))]
        assert isinstance(first[2], Finished) and (first[2].finish_reason, first[2].usage) == (
            FinishReason.EOS, Usage(5, 2, 0))
        assert len(first) == 3
        await _run(session, "Wie geht es?")
        system = ChatTurn("system", "Translate the German text the user sends into English. "
                                    "Reply with the translation alone.")
        assert router.submitted[0].request.messages == (system, ChatTurn("user", "Guten Morgen."))
        assert router.submitted[1].request.messages == (
            system, ChatTurn("user", "Guten Morgen."), ChatTurn("assistant", "t0"), ChatTurn("user", "Wie geht es?"))
        assert router.submitted[1].request.model == "chat-model"
        assert session.history == [("Guten Morgen.", "t0"), ("Wie geht es?", "t1")]
        assert session.num_segments == 2

    asyncio.run(main())


def test_without_a_source_language_the_instruction_leaves_it_to_the_model() -> None:
    async def main() -> None:
        session, router = _session(source="")
        await _run(session, "Bonjour")
        assert router.submitted[0].request.messages[0] == ChatTurn(
            "system", "Translate the text the user sends into English. Reply with the translation alone.")

    asyncio.run(main())


def test_a_model_without_chat_template_gets_labelled_lines_that_stop_at_a_blank_line() -> None:
    async def main() -> None:
        session, router = _session(card=PLAIN)
        await _run(session, "Guten Morgen.")
        await _run(session, "Wie geht es?")
        request = router.submitted[1].request
        assert request.prompt == ("Translate German to English.\n\nGerman: Guten Morgen.\nEnglish: t0\n\n"
                                  "German: Wie geht es?\nEnglish:")
        assert request.options == TextOptions(stop=(PLAIN_STOP,), add_special_tokens=True)
        assert request.messages is None

    asyncio.run(main())


def test_history_is_trimmed_to_half_its_limit_so_the_shared_prefix_changes_rarely() -> None:
    async def main() -> None:
        session, router = _session(max_history=4)
        for i in range(7):
            await _run(session, f"s{i}")
        # After the fifth segment the history (5 > 4) keeps its newest 2; the sixth and seventh add to it.
        assert [segment for segment, _ in session.history] == ["s3", "s4", "s5", "s6"]
        users = [[t.content for t in s.request.messages if t.role == "user"] for s in router.submitted]
        assert users[4] == ["s0", "s1", "s2", "s3", "s4"]
        assert users[5] == ["s3", "s4", "s5"]
        assert users[6] == ["s3", "s4", "s5", "s6"]

    asyncio.run(main())


def test_a_failed_segment_raises_and_leaves_the_history_as_it_was() -> None:
    async def main() -> None:
        session, router = _session(failures={1: Unavailable("worker lost")})
        await _run(session, "eins")
        with pytest.raises(Unavailable, match="worker lost"):
            await _run(session, "zwei")
        assert session.history == [("eins", "t0")]
        assert session.num_segments == 1

    asyncio.run(main())


def test_closing_a_segment_early_aborts_it_upstream_and_does_not_remember_it() -> None:
    async def main() -> None:
        session, router = _session()
        stream = session.translate("eins")
        assert await anext(stream) == TextDelta("t", (1,))
        await stream.aclose()
        assert router.handles[0].aborted
        assert session.history == []

    asyncio.run(main())


def test_later_segments_may_repeat_but_not_change_the_model_or_languages() -> None:
    async def main() -> None:
        session, _ = _session()
        session.check_segment("Hallo", "chat-model", "German", "English")
        with pytest.raises(RequestError, match="target_language to 'French'") as info:
            session.check_segment("Hallo", target_language="French")
        assert info.value.param == "target_language"
        with pytest.raises(RequestError, match="model to 'other'"):
            session.check_segment("Hallo", model="other")
        with pytest.raises(RequestError, match="segment 0 has no text"):
            session.check_segment("  ")

    asyncio.run(main())


def test_a_session_needs_a_target_language_and_a_served_model() -> None:
    core = GatewayCore(ScriptedRouter([CHAT]), Metrics("gateway"))
    with pytest.raises(RequestError, match="target_language") as info:
        TranslationSession(core, TranslationSettings(model="", target_language=" "))
    assert info.value.param == "target_language"
    with pytest.raises(ModelNotFound, match="'missing' does not exist"):
        TranslationSession(core, TranslationSettings(model="missing", target_language="English"))
    with pytest.raises(ValueError, match="max_history must be at least 2, got 1"):
        TranslationSession(core, TranslationSettings(model="", target_language="English"), max_history=1)
