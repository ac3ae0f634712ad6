"""Per-request text state: token chunks in, text deltas and the finish out (no gRPC here).

A `RequestState` owns everything the tokenizer stage knows of one request once it is forwarded:
its incremental detokenizer, its stop-string matcher, token counts and timings. `step_requests`
turns one scheduler message's token chunks of many requests into `TextStep`s with one batched decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.common.text_options import TextOptions
from services.tokenizer.detokenizer import IncrementalDetokenizer, detokenize_flush, detokenize_step
from services.tokenizer.stop_strings import StopStringMatcher
from services.tokenizer.tokenizer import TextTokenizer


@dataclass(slots=True)
class TextStep:
    """What one request produced from one scheduler message."""

    text: str
    token_ids: list[int]
    stop_string: str | None = None  # set once, when a stop string ended the output (abort upstream then)
    num_prompt_tokens: int | None = None  # set on the request's first step


@dataclass(slots=True)
class RequestState:
    """One forwarded request: detokenizer, stop strings, counts, timings."""

    request_id: str  # as the upstream stream knows it
    num_prompt_tokens: int
    options: TextOptions
    detokenizer: IncrementalDetokenizer
    stop_matcher: StopStringMatcher
    prompt_text: str = ""  # sent first when echo_prompt
    tokenizer_s: float = 0.0  # time to render and encode the prompt
    gateway_s: float = 0.0
    num_output_tokens: int = 0  # tokens whose text counts (up to the stop string)
    sent_first: bool = False
    stop_string: str | None = None
    finished: bool = False

    @classmethod
    def create(cls, tokenizer: TextTokenizer, request_id: str, num_prompt_tokens: int, options: TextOptions,
               **timings: float) -> "RequestState":
        det = IncrementalDetokenizer(
            skip_special_tokens=options.skip_special_tokens,
            byte_token_ids=tokenizer.byte_token_ids,
            special_token_ids=tokenizer.all_special_ids,
        )
        matcher = StopStringMatcher(options.stop, options.include_stop_str_in_output)
        return cls(request_id, num_prompt_tokens, options, det, matcher, **timings)

    @property
    def stopped(self) -> bool:
        """A stop string ended the output; further tokens are dropped."""
        return self.stop_string is not None

    def take_first(self) -> int | None:
        """The prompt length, the first time only (it rides on the request's first event)."""
        if self.sent_first:
            return None
        self.sent_first = True
        return self.num_prompt_tokens

    def _echo(self) -> str:
        if self.sent_first or not self.options.echo_prompt:
            return ""
        return self.prompt_text

    def apply_delta(self, delta: str, token_ids: list[int]) -> TextStep:
        self.num_output_tokens += len(token_ids)
        if self.sent_first and not self.stop_matcher.stops:  # the common case, kept short
            return TextStep(delta, token_ids)
        echo = self._echo()
        result = self.stop_matcher.feed(delta)
        if result.stop_string is not None:
            self.stop_string = result.stop_string
        return TextStep(echo + result.text, token_ids, result.stop_string, self.take_first())

    def finish(self, tokenizer: TextTokenizer) -> TextStep:
        """The last text of a request the scheduler finished: held-back characters and stop-string tail."""
        echo = self._echo()
        self.finished = True
        if self.stopped:
            return TextStep(echo, [], None, self.take_first())
        tail = detokenize_flush(tokenizer.backend, self.detokenizer)
        result = self.stop_matcher.feed(tail)
        if result.stop_string is not None:
            self.stop_string = result.stop_string
            return TextStep(echo + result.text, [], result.stop_string, self.take_first())
        return TextStep(echo + result.text + self.stop_matcher.flush(), [], None, self.take_first())


def step_requests(tokenizer: TextTokenizer, chunks: Sequence[tuple[RequestState, list[int]]]) -> list[TextStep]:
    """New token ids of many requests → one TextStep each, decoding all of them in one batch.

    Tokens that arrive after a request's stop string are dropped (the scheduler was told to abort it).
    """
    live = [(state, ids) for state, ids in chunks if not state.stopped and not state.finished]
    deltas = iter(detokenize_step(tokenizer.backend, [(s.detokenizer, ids) for s, ids in live]))
    steps: list[TextStep] = []
    for state, ids in chunks:
        if state.stopped or state.finished:
            steps.append(TextStep("", [], None, state.take_first()))
        else:
            steps.append(state.apply_delta(next(deltas), ids))
    return steps
