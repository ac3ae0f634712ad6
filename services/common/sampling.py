"""Sampling parameters: one dataclass that travels, as protobuf, from the gateway to the worker's sampler.

Pure Python (no torch, no grpc) so the scheduler can hold it. Text-level options (stop strings,
special-token handling) belong to the tokenizer stage and are not here.

`validate` runs once, where a request enters (the gateway); every later stage builds the dataclass from protobuf
without checking it again. The one check that needs the prompt's length (does max_tokens fit the context, and what
does `fill_context` leave) runs in the tokenizer stage, which replaces `fill_context` by a number.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgument

# The penalties and temperatures that are accepted; outside these a request is refused, not clamped.
MAX_TEMPERATURE = 100.0
# The worker divides float32 logits by the temperature: a positive temperature near float32's smallest normal
# (about 1e-38) turns them into infinities and sampling into NaN. Below this bound sampling is greedy in effect, so
# such a temperature is refused rather than clamped: 0 asks for greedy decoding. The bound is 1e-6 as a float32
# (temperature travels as one), so 1e-6 passes both before and after the protobuf hop.
MIN_TEMPERATURE = struct.unpack("f", struct.pack("f", 1e-6))[0]
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values
DEFAULT_MAX_TOKENS = 16


# xgrammar prefixes its messages with a time stamp, a source location and sometimes the failed check.
_GRAMMAR_NOISE = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: .*? is false: )?")


def grammar_error_message(exc: Exception) -> str:
    """The reason in a grammar library's exception, without its log prefix."""
    return _GRAMMAR_NOISE.sub("", str(exc).strip()).strip()


GUIDED_KINDS = ("json_schema", "json_object", "regex", "grammar", "structural_tag", "tool_calls")


@dataclass(frozen=True, slots=True)
class Guided:
    """A grammar the output must follow: `kind` is one of GUIDED_KINDS, `spec` its text ("" for json_object).

    Only the shape is checked here; whether the spec compiles is checked at the edge (the gateway) and, as a
    last resort, by the worker that compiles it."""

    kind: str
    spec: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GUIDED_KINDS:
            raise InvalidArgument(f"guided kind must be one of {', '.join(GUIDED_KINDS)}, got {self.kind!r}")
        if (self.kind == "json_object") != (self.spec == ""):
            raise InvalidArgument(f"guided {self.kind} needs {'no' if self.kind == 'json_object' else 'a'} spec")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick each next token. Defaults give greedy decoding of 16 tokens."""

    max_tokens: int = DEFAULT_MAX_TOKENS  # ignored while fill_context is set
    min_tokens: int = 0
    temperature: float = 0.0
    top_k: int = 0  # 0 disables top-k
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # > 1 discourages tokens seen in the prompt or output
    presence_penalty: float = 0.0  # subtracted once from tokens seen in the output
    frequency_penalty: float = 0.0  # subtracted per occurrence in the output
    seed: int | None = None  # same seed, same tokens, whatever the batch
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; n: the chosen token's and the top n alternatives'
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, value added to its logit), ids increasing
    guided: Guided | None = None  # None: unconstrained
    # Generate until the model stops or the context is full: the tokenizer stage, which knows the prompt's length,
    # sets max_tokens to what the context leaves and clears this.
    fill_context: bool = False

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def is_reproducible(self) -> bool:
        """Whether the same request always gives the same tokens (greedy or seeded)."""
        return self.is_greedy or self.seed is not None

    def validate(self) -> None:
        """Raises InvalidArgument naming the first field out of range (the message starts with its name). Called
        once, on entry; later stages trust what it passed."""
        if self.fill_context:
            if self.min_tokens < 0:
                raise InvalidArgument(f"min_tokens must be at least 0, got {self.min_tokens}")
        elif self.max_tokens <= 0:
            raise InvalidArgument(f"max_tokens must be at least 1, got {self.max_tokens}")
        elif self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise InvalidArgument(
                f"min_tokens must be between 0 and max_tokens ({self.max_tokens}), got {self.min_tokens}"
            )
        if not (math.isfinite(self.temperature)
                and (self.temperature == 0.0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE)):
            raise InvalidArgument(f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], "
                                  f"got {self.temperature}")
        if self.top_k < 0:
            raise InvalidArgument(f"top_k must be 0 (off) or positive, got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}")
        if not (0.0 <= self.min_p <= 1.0):
            raise InvalidArgument(f"min_p must be in [0, 1], got {self.min_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0.0):
            raise InvalidArgument(f"repetition_penalty must be positive, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -2.0 <= value <= 2.0):
                raise InvalidArgument(f"{name} must be in [-2, 2], got {value}")
        if self.seed is not None and not (0 <= self.seed < 2**63):
            raise InvalidArgument(f"seed must be in [0, 2**63), got {self.seed}")
        if any(t < 0 for t in self.stop_token_ids):
            raise InvalidArgument(f"stop_token_ids must be non-negative, got {list(self.stop_token_ids)}")
        if self.logprobs is not None and not (0 <= self.logprobs <= MAX_LOGPROBS):
            raise InvalidArgument(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")
        for token_id, bias in self.logit_bias:
            if token_id < 0:
                raise InvalidArgument(f"logit_bias token ids must be non-negative, got {token_id}")
            if not (math.isfinite(bias) and -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS):
                raise InvalidArgument(f"logit_bias values must be in [-100, 100], got {bias} for token {token_id}")
        if self.guided is not None:
            self.check_grammar_may_end()

    def check_grammar_may_end(self) -> None:
        """Refuses what would keep a grammar from ending the output (it allows only EOS once complete): the
        gateway also calls this for a forced tool call, whose grammar the tokenizer stage adds."""
        if self.min_tokens or self.ignore_eos:
            raise InvalidArgument("min_tokens and ignore_eos cannot be combined with guided decoding")

    # ---- protobuf (flashstream.v1.SamplingParams) ----

    @classmethod
    def from_pb(cls, pb: Any) -> "SamplingParams":
        """Builds from a `flashstream.v1.SamplingParams`, unchecked (call `validate` on entry); unset fields take
        the defaults above."""
        return cls(
            max_tokens=pb.max_tokens if pb.HasField("max_tokens") else DEFAULT_MAX_TOKENS,
            min_tokens=pb.min_tokens,
            temperature=pb.temperature,
            top_k=pb.top_k,
            top_p=pb.top_p if pb.HasField("top_p") else 1.0,
            min_p=pb.min_p,
            repetition_penalty=pb.repetition_penalty if pb.HasField("repetition_penalty") else 1.0,
            presence_penalty=pb.presence_penalty,
            frequency_penalty=pb.frequency_penalty,
            seed=pb.seed if pb.HasField("seed") else None,
            stop_token_ids=tuple(pb.stop_token_ids),
            ignore_eos=pb.ignore_eos,
            logprobs=pb.logprobs if pb.HasField("logprobs") else None,
            logit_bias=tuple(sorted(pb.logit_bias.items())),
            guided=_guided_from_pb(pb.guided) if pb.HasField("guided") else None,
            fill_context=pb.fill_context,
        )

    def to_pb(self, pb_cls: Any) -> Any:
        """Fills a new `flashstream.v1.SamplingParams` (pass the class to keep this module grpc-free)."""
        pb = pb_cls(
            min_tokens=self.min_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            stop_token_ids=list(self.stop_token_ids),
            ignore_eos=self.ignore_eos,
            fill_context=self.fill_context,
        )
        if not self.fill_context:  # a request that fills the context has no max_tokens yet
            pb.max_tokens = self.max_tokens
        if self.seed is not None:
            pb.seed = self.seed
        if self.logprobs is not None:
            pb.logprobs = self.logprobs
        pb.logit_bias.update(dict(self.logit_bias))
        if self.guided is not None:
            if self.guided.kind == "json_object":
                pb.guided.json_object = True
            else:
                setattr(pb.guided, self.guided.kind, self.guided.spec)
        return pb


def _guided_from_pb(pb: Any) -> Guided | None:
    kind = pb.WhichOneof("kind")
    if kind is None or (kind == "json_object" and not pb.json_object):
        return None
    return Guided(kind, "" if kind == "json_object" else getattr(pb, kind))
