"""Protobuf ⇄ plain objects for the tokenizer stage (kept apart so the core never imports protobuf)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flashstream.v1 import common_pb2, scheduler_pb2, tokenizer_pb2

from services.common.errors import ErrorCode, FlashStreamError
from services.common.pb import error_to_pb, sampling_from_pb, sampling_to_pb
from services.common.text_options import TextOptions
from services.tokenizer.intake import PreparedRequest, TextInput
from services.tokenizer.request_state import RequestState, TextStep
from services.tokenizer.tokenizer import TextTokenizer
from services.tokenizer.tools import ToolRequest, template_message, template_tool

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer


def text_input_from_pb(pb: tokenizer_pb2.TextRequest) -> TextInput:
    """The request as the gateway validated it: its sampling and text options are not checked again."""
    options = TextOptions(
        stop=tuple(pb.options.stop),
        include_stop_str_in_output=pb.options.include_stop_str_in_output,
        skip_special_tokens=pb.options.skip_special_tokens,
        add_special_tokens=pb.options.add_special_tokens,
        echo_prompt=pb.options.echo_prompt,
    )
    if any(s == "" for s in options.stop):  # it would match everywhere: the stage's detokenizing loop never ends
        raise FlashStreamError(f"request {pb.request_id!r} came with an empty stop string, which the gateway "
                               "refuses", ErrorCode.INTERNAL)
    kind = pb.WhichOneof("input")
    request = TextInput(
        request_id=pb.request_id,
        sampling=sampling_from_pb(pb.sampling),
        options=options,
        priority=pb.priority,
        deadline_unix_s=pb.deadline_unix_s,
        arrival_unix_s=pb.arrival_unix_s,
        gateway_s=pb.gateway_s,
        traceparent=pb.traceparent,
    )
    if kind == "prompt":
        request.prompt = pb.prompt
    elif kind == "chat":
        request.messages = messages_from_pb(pb.chat.messages)
        request.add_generation_prompt = pb.chat.add_generation_prompt
        choice = pb.chat.tool_choice
        request.tools = ToolRequest(
            [template_tool(t.name, t.description, t.parameters_json) for t in pb.chat.tools],
            choice.mode or "auto", choice.function, pb.chat.single_tool_call,
        )
    elif kind == "tokens":
        request.token_ids = list(pb.tokens.token_ids)
    else:
        raise FlashStreamError(f"request {pb.request_id!r} came with no prompt, chat or token ids: the gateway sends "
                               "exactly one", ErrorCode.INTERNAL)
    return request


def messages_from_pb(messages: Sequence[common_pb2.ChatMessage]) -> list[dict[str, Any]]:
    """Chat turns as templates read them (tool calls and tool answers included)."""
    return [
        template_message(m.role, m.content, [(c.id, c.name, c.arguments_json) for c in m.tool_calls],
                         m.tool_call_id, m.name)
        for m in messages
    ]


def token_request_to_pb(prepared: PreparedRequest, scheduler_id: str,
                        traceparent: str = "") -> scheduler_pb2.TokenRequest:
    req = prepared.input
    return scheduler_pb2.TokenRequest(
        request_id=scheduler_id,
        prompt_token_ids=prepared.prompt_token_ids,
        sampling=sampling_to_pb(req.sampling),
        priority=req.priority,
        deadline_unix_s=req.deadline_unix_s,
        arrival_unix_s=req.arrival_unix_s,
        traceparent=traceparent,
    )


def error_event(request_id: str, exc: FlashStreamError) -> tokenizer_pb2.TextEvent:
    return tokenizer_pb2.TextEvent(request_id=request_id, error=error_to_pb(exc))


def add_chunk_event(
    events: RepeatedCompositeFieldContainer[tokenizer_pb2.TextEvent], state: RequestState, step: TextStep,
    logprobs: list[common_pb2.TokenLogprob] | None = None,
) -> None:
    """Adds the step's text as a TextEvent to `events` (a message's repeated TextEvent field), built in place."""
    event = events.add(request_id=state.request_id)
    chunk = event.chunk
    chunk.text = step.text
    chunk.token_ids.extend(step.token_ids)
    if logprobs:
        chunk.logprobs.extend(logprobs)
    if step.num_prompt_tokens is not None:
        event.num_prompt_tokens = step.num_prompt_tokens


def done_event(state: RequestState, done: common_pb2.Done | None, reason: int) -> tokenizer_pb2.TextEvent:
    """The request's Done: the scheduler's figures (when it sent any) plus this stage's, and the stop string."""
    out = common_pb2.Done()
    if done is not None:
        out.CopyFrom(done)
    out.finish_reason = reason
    # This stage encoded the prompt, so its length is known here whatever ended the request (the scheduler
    # may never have seen it). Past a stop string, the tokens the client got are the ones counted here.
    out.usage.prompt_tokens = state.num_prompt_tokens
    if state.stop_string is not None:
        out.finish_reason = common_pb2.FINISH_REASON_STOP_STRING
        out.stop_string = state.stop_string
        out.usage.completion_tokens = state.num_output_tokens
    if done is None:
        out.usage.completion_tokens = state.num_output_tokens
    out.latency.tokenizer_s = state.tokenizer_s
    out.latency.gateway_s = state.gateway_s
    event = tokenizer_pb2.TextEvent(request_id=state.request_id, done=out)
    first = state.take_first()
    if first is not None:
        event.num_prompt_tokens = first
    return event


def logprobs_with_text(tokenizer: TextTokenizer, logprobs: list[common_pb2.TokenLogprob]) -> list[common_pb2.TokenLogprob]:
    """Copies of the scheduler's logprobs with each token's own bytes and text (U+FFFD for part of a character)."""
    def piece(token_id: int) -> dict[str, object]:
        raw = tokenizer.token_bytes(token_id)
        return {"token_id": token_id, "token_bytes": raw, "text": raw.decode("utf-8", "replace")}

    out = [common_pb2.TokenLogprob(logprob=lp.logprob, **piece(lp.token_id))  # type: ignore[arg-type]
           for lp in logprobs]
    for lp, copy in zip(logprobs, out):
        for top in lp.top:
            copy.top.add(logprob=top.logprob, **piece(top.token_id))
    return out
