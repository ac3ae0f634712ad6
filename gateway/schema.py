"""Plain objects of the gateway core: a generation request, its events, and a served model.

No protobuf and no JSON here: the gRPC and HTTP layers translate to and from these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gateway import json_text
from gateway.errors import RequestError
from gateway.guided import check_guided, check_json_schema
from services.common.errors import InvalidArgument
from services.common.finish_reason import FinishReason
from services.common.sampling import SamplingParams
from services.common.text_options import TextOptions

CHAT_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made (or, in a request's history, made earlier)."""

    id: str
    name: str
    arguments_json: str  # the arguments as JSON text


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call."""

    name: str
    description: str = ""
    parameters_json: str = ""  # JSON schema of the arguments; "" for none


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns that called tools
    tool_call_id: str = ""  # tool turns: the call answered
    name: str = ""  # tool turns: the function that answered


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One public request: exactly one of prompt, token_ids, messages. Its sampling was validated where it was
    parsed (`SamplingParams.validate`); the rest is checked here."""

    model: str
    sampling: SamplingParams
    prompt: str | None = None
    token_ids: tuple[int, ...] | None = None
    messages: tuple[ChatTurn, ...] | None = None
    options: TextOptions = field(default_factory=TextOptions)
    add_generation_prompt: bool = True  # chat only
    priority: int = 0
    timeout_s: float = 0.0  # 0: the gateway's default
    bypass_cache: bool = False  # neither read nor fill the result cache, nor join an identical request
    tools: tuple[ToolSpec, ...] = ()  # chat only: functions the model may call
    tool_choice: str = "auto"  # "auto", "none" or "required" (a call of one of the tools, by grammar)
    forced_tool: str = ""  # a tool the output must call (by grammar); overrides tool_choice
    single_tool_call: bool = False  # at most one call (OpenAI parallel_tool_calls false)

    def __post_init__(self) -> None:
        inputs = [x for x in (self.prompt, self.token_ids, self.messages) if x is not None]
        if len(inputs) != 1:
            raise RequestError("exactly one of prompt, token ids or messages must be given", "prompt")
        if self.prompt is not None and self.prompt == "":
            raise RequestError("prompt must not be empty", "prompt")
        if self.token_ids is not None and not self.token_ids:
            raise RequestError("prompt must not be empty", "prompt")
        if self.messages is not None:
            if not self.messages:
                raise RequestError("messages must hold at least one message", "messages")
            for i, turn in enumerate(self.messages):
                if turn.role not in CHAT_ROLES:
                    raise RequestError(
                        f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, got {turn.role!r}",
                        f"messages[{i}].role",
                    )
                for j, call in enumerate(turn.tool_calls):  # the tokenizer reads them for the template
                    field = f"messages[{i}].tool_calls[{j}].function.arguments"
                    json_text.loads(call.arguments_json, f"'{field}'", field)
        if any(s == "" for s in self.options.stop):
            raise RequestError("stop strings must not be empty", "stop")
        if not (math.isfinite(self.timeout_s) and self.timeout_s >= 0):
            raise RequestError(f"timeout must be a non-negative number of seconds, got {self.timeout_s}", "timeout")
        if self.sampling.guided is not None:
            check_guided(self.sampling.guided, "response_format")
        check_tools(self)

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


def check_tools(request: GenerationRequest) -> None:
    """Tools only on chats, unique names, parameter schemas that parse, a choice that names a given tool."""
    if request.tool_choice not in ("auto", "none", "required"):
        raise RequestError(f"tool_choice must be 'auto', 'none', 'required' or a function, got "
                           f"{request.tool_choice!r}", "tool_choice")
    if not request.tools:
        if request.tool_choice == "required" or request.forced_tool:
            raise RequestError("tool_choice asks for a tool call but no tools were given", "tool_choice")
        return
    if request.messages is None:
        raise RequestError("tools are only accepted on chat requests", "tools")
    names = [t.name for t in request.tools]
    for i, tool in enumerate(request.tools):
        if not tool.name or names.index(tool.name) != i:
            raise RequestError(f"tools[{i}].function.name must be a non-empty name used once, got {tool.name!r}",
                               f"tools[{i}].function.name")
        if tool.parameters_json:
            check_json_schema(tool.parameters_json, f"tools[{i}].function.parameters")
    if request.forced_tool and request.forced_tool not in names:
        raise RequestError(f"tool_choice names function {request.forced_tool!r}, which is not among the tools",
                           "tool_choice")
    if request.tool_choice == "required" or request.forced_tool:
        if request.sampling.guided is not None:
            raise RequestError("a forced tool call cannot be combined with response_format", "tool_choice")
        try:
            request.sampling.check_grammar_may_end()
        except InvalidArgument as exc:  # no param: the body clients got when the tokenizer stage refused it
            raise RequestError(exc.message) from exc


@dataclass(frozen=True, slots=True)
class TranslationSettings:
    """What a session's first segment fixes for every segment."""

    model: str
    target_language: str
    source_language: str = ""  # empty: the model tells the source language from the text
    sampling: SamplingParams = field(default_factory=SamplingParams)
    options: TextOptions = field(default_factory=TextOptions)
    priority: int = 0
    timeout_s: float = 0.0  # per segment; 0: the gateway's default
    bypass_cache: bool = False


@dataclass(frozen=True, slots=True)
class Submission:
    """A validated request as it goes to a tokenizer: with its id, clock times and the gateway's time so far."""

    request_id: str
    request: GenerationRequest
    arrival_unix_s: float
    deadline_unix_s: float
    gateway_s: float
    tenant: str = ""  # hash of the API key used ("" without keys): result cache entries are per tenant
    traceparent: str = ""  # W3C trace context of the request's gateway span ("" when not traced)


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token_id: int
    logprob: float
    text: str
    token_bytes: bytes = b""  # the token's own bytes (text is U+FFFD for part of a character)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    text: str
    top: tuple[TopLogprob, ...] = ()
    token_bytes: bytes = b""  # the token's own bytes (text is U+FFFD for part of a character)


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New text of one request; num_prompt_tokens is set on a request's first event only."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    num_prompt_tokens: int = 0


def merge_deltas(deltas: list[TextDelta]) -> TextDelta:
    """One delta holding the text, token ids and logprobs of `deltas` in order (at least one)."""
    if len(deltas) == 1:
        return deltas[0]
    num_prompt_tokens = next((d.num_prompt_tokens for d in deltas if d.num_prompt_tokens), 0)
    return TextDelta("".join(d.text for d in deltas), tuple(t for d in deltas for t in d.token_ids),
                     tuple(lp for d in deltas for lp in d.logprobs), num_prompt_tokens)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    result_cached: bool = False


@dataclass(frozen=True, slots=True)
class Latency:
    gateway_s: float = 0.0
    tokenizer_s: float = 0.0
    queue_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Finished:
    """The terminal event of a request that ended normally."""

    finish_reason: FinishReason
    usage: Usage = field(default_factory=Usage)
    latency: Latency = field(default_factory=Latency)
    stop_string: str = ""


Event = TextDelta | Finished


@dataclass(frozen=True, slots=True)
class ModelCard:
    """A served model, from its tokenizer's Info."""

    id: str
    revision: str = ""
    max_model_len: int = 0
    vocab_size: int = 0
    has_chat_template: bool = True
    owned_by: str = "flashstream"
    task: str = "generate"  # "embed": an embedding-only model (an encoder)
    hidden_size: int = 0  # embedding length before any dimensions cut (0: not known yet)
    max_embed_len: int = 0  # longest embedding input in tokens
