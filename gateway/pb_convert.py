"""Translations between the gateway's plain objects and protobuf (public Gateway and internal Tokenizer)."""

from __future__ import annotations

import dataclasses

from flashstream.v1 import common_pb2, gateway_pb2, tokenizer_pb2

from gateway.embeddings import EmbeddingRequest, EmbeddingResult
from gateway.schema import (
    ChatTurn,
    Event,
    Finished,
    GenerationRequest,
    Latency,
    ModelCard,
    Submission,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolSpec,
    TopLogprob,
    TranslationSettings,
    Usage,
)
from services.common.errors import ErrorCode, FlashStreamError, InvalidArgument
from services.common.finish_reason import FinishReason
from services.common.pb import sampling_from_pb, sampling_to_pb
from services.common.text_options import TextOptions

# ---- public Gateway requests ----


def _options(
    options: gateway_pb2.GenerateOptions, add_special_tokens: bool, chat: bool = False
) -> tuple[dict[str, object], TextOptions]:
    """The request's fields from its options; sampling is validated here, the gRPC API's entry. A chat without
    max_tokens runs until the model stops or the context is full, as OpenAI's chat does."""
    sampling = sampling_from_pb(options.sampling)
    if options.sampling.fill_context and options.sampling.HasField("max_tokens"):
        raise InvalidArgument("max_tokens and fill_context cannot both be set")
    if chat and not options.sampling.HasField("max_tokens"):
        sampling = dataclasses.replace(sampling, fill_context=True)
    sampling.validate()  # raises InvalidArgument naming the field
    text = TextOptions(
        stop=tuple(options.stop),
        include_stop_str_in_output=options.include_stop_str_in_output,
        skip_special_tokens=options.skip_special_tokens,
        add_special_tokens=add_special_tokens,
    )
    return {"sampling": sampling, "priority": options.priority, "timeout_s": options.timeout_s,
            "bypass_cache": options.bypass_cache}, text


def generate_request_from_pb(pb: gateway_pb2.GenerateRequest) -> GenerationRequest:
    add_special = pb.add_special_tokens if pb.HasField("add_special_tokens") else True
    fields, text = _options(pb.options, add_special)
    return GenerationRequest(model=pb.model, prompt=pb.prompt, options=text, **fields)  # type: ignore[arg-type]


def chat_turn_from_pb(m: common_pb2.ChatMessage) -> ChatTurn:
    calls = tuple(ToolCall(c.id, c.name, c.arguments_json) for c in m.tool_calls)
    return ChatTurn(m.role, m.content, calls, m.tool_call_id, m.name)


def chat_turn_to_pb(turn: ChatTurn) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(
        role=turn.role, content=turn.content, tool_call_id=turn.tool_call_id, name=turn.name,
        tool_calls=[common_pb2.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments_json)
                    for c in turn.tool_calls],
    )


def chat_request_from_pb(pb: gateway_pb2.ChatRequest) -> GenerationRequest:
    fields, text = _options(pb.options, False, chat=True)
    messages = tuple(chat_turn_from_pb(m) for m in pb.messages)
    tools = tuple(ToolSpec(t.name, t.description, t.parameters_json) for t in pb.tools)
    choice = pb.tool_choice.WhichOneof("choice")
    return GenerationRequest(
        model=pb.model, messages=messages, options=text, tools=tools,
        tool_choice="required" if choice == "function" else (pb.tool_choice.mode or "auto"),
        forced_tool=pb.tool_choice.function if choice == "function" else "", single_tool_call=pb.single_tool_call,
        **fields,  # type: ignore[arg-type]
    )


def translation_settings_from_pb(pb: gateway_pb2.TranslateSegment) -> TranslationSettings:
    """The session settings a Translate call's first segment carries."""
    fields, text = _options(pb.options, False, chat=True)
    return TranslationSettings(model=pb.model, source_language=pb.source_language.strip(),
                               target_language=pb.target_language.strip(), options=text,
                               **fields)  # type: ignore[arg-type]


# ---- public Gateway responses ----


def delta_to_pb(request_id: str, delta: TextDelta) -> gateway_pb2.GenerateChunk:
    chunk = common_pb2.TextChunk(text=delta.text, token_ids=delta.token_ids)
    for lp in delta.logprobs:
        chunk.logprobs.append(
            common_pb2.TokenLogprob(
                token_id=lp.token_id,
                logprob=lp.logprob,
                text=lp.text,
                top=[common_pb2.TopLogprob(token_id=t.token_id, logprob=t.logprob, text=t.text,
                                           token_bytes=t.token_bytes) for t in lp.top],
                token_bytes=lp.token_bytes,
            )
        )
    return gateway_pb2.GenerateChunk(request_id=request_id, chunk=chunk)


def translate_event_to_pb(segment_index: int, event: Event) -> gateway_pb2.TranslateChunk:
    """A translation event as the session's next message: its text, or the segment's Done."""
    if isinstance(event, Finished):
        return gateway_pb2.TranslateChunk(segment_index=segment_index, done=finished_to_pb("", event).done)
    return gateway_pb2.TranslateChunk(segment_index=segment_index, chunk=delta_to_pb("", event).chunk)


def finished_to_pb(request_id: str, done: Finished) -> gateway_pb2.GenerateChunk:
    u, lat = done.usage, done.latency
    return gateway_pb2.GenerateChunk(
        request_id=request_id,
        done=common_pb2.Done(
            finish_reason=int(done.finish_reason),
            usage=common_pb2.Usage(
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                cached_tokens=u.cached_tokens,
                result_cached=u.result_cached,
            ),
            latency=common_pb2.LatencyBreakdown(
                gateway_s=lat.gateway_s,
                tokenizer_s=lat.tokenizer_s,
                queue_s=lat.queue_s,
                prefill_s=lat.prefill_s,
                decode_s=lat.decode_s,
            ),
            stop_string=done.stop_string,
        ),
    )


def card_to_pb(card: ModelCard) -> gateway_pb2.ModelCard:
    return gateway_pb2.ModelCard(
        id=card.id, revision=card.revision, max_model_len=card.max_model_len, owned_by=card.owned_by
    )


# ---- the Tokenizer hop ----


def card_from_info(info: tokenizer_pb2.TokenizerInfo) -> ModelCard:
    return ModelCard(
        id=info.model_id,
        revision=info.model_revision,
        max_model_len=info.max_model_len,
        vocab_size=info.vocab_size,
        has_chat_template=info.has_chat_template,
        task=info.task or "generate",
        hidden_size=info.hidden_size,
        max_embed_len=info.max_embed_len,
    )


def text_request_to_pb(sub: Submission) -> tokenizer_pb2.TextRequest:
    req = sub.request
    opts = req.options
    pb = tokenizer_pb2.TextRequest(
        request_id=sub.request_id,
        model=req.model,
        sampling=sampling_to_pb(req.sampling),
        options=tokenizer_pb2.TextOptions(
            stop=opts.stop,
            include_stop_str_in_output=opts.include_stop_str_in_output,
            skip_special_tokens=opts.skip_special_tokens,
            add_special_tokens=opts.add_special_tokens,
            echo_prompt=opts.echo_prompt,
        ),
        priority=req.priority,
        deadline_unix_s=sub.deadline_unix_s,
        arrival_unix_s=sub.arrival_unix_s,
        gateway_s=sub.gateway_s,
        traceparent=sub.traceparent,
    )
    if req.messages is not None:
        pb.chat.add_generation_prompt = req.add_generation_prompt
        pb.chat.messages.extend(chat_turn_to_pb(m) for m in req.messages)
        pb.chat.tools.extend(
            common_pb2.Tool(name=t.name, description=t.description, parameters_json=t.parameters_json)
            for t in req.tools
        )
        pb.chat.single_tool_call = req.single_tool_call
        if req.forced_tool:
            pb.chat.tool_choice.function = req.forced_tool
        elif req.tool_choice != "auto":  # unset means auto
            pb.chat.tool_choice.mode = req.tool_choice
    elif req.token_ids is not None:
        pb.tokens.token_ids.extend(req.token_ids)
    else:
        pb.prompt = req.prompt or ""
    return pb


def _logprobs_from_pb(items: object) -> tuple[TokenLogprob, ...]:
    return tuple(
        TokenLogprob(
            token_id=lp.token_id,
            logprob=lp.logprob,
            text=lp.text,
            top=tuple(TopLogprob(t.token_id, t.logprob, t.text, t.token_bytes) for t in lp.top),
            token_bytes=lp.token_bytes,
        )
        for lp in items  # type: ignore[attr-defined]
    )


def event_from_pb(ev: tokenizer_pb2.TextEvent) -> Event | FlashStreamError:
    """A TextEvent as a plain event, or the error it carries (returned, not raised)."""
    kind = ev.WhichOneof("event")
    if kind == "chunk":
        c = ev.chunk
        return TextDelta(c.text, tuple(c.token_ids), _logprobs_from_pb(c.logprobs) if c.logprobs else (),
                         ev.num_prompt_tokens)
    if kind == "done":
        d = ev.done
        try:
            reason = FinishReason(d.finish_reason)
        except ValueError:
            reason = FinishReason.STOP
        u, lat = d.usage, d.latency
        return Finished(
            finish_reason=reason,
            usage=Usage(u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.result_cached),
            latency=Latency(lat.gateway_s, lat.tokenizer_s, lat.queue_s, lat.prefill_s, lat.decode_s),
            stop_string=d.stop_string,
        )
    if kind == "error":
        try:
            code = ErrorCode(ev.error.code)
        except ValueError:
            code = ErrorCode.UNKNOWN
        return FlashStreamError(ev.error.message or f"tokenizer error {code.name}", code)
    return FlashStreamError(f"tokenizer sent an empty event for request {ev.request_id}", ErrorCode.INTERNAL)


def embed_request_from_pb(pb: gateway_pb2.EmbedRequest) -> EmbeddingRequest:
    return EmbeddingRequest(
        model=pb.model, texts=tuple(pb.inputs), token_ids=tuple(tuple(t.token_ids) for t in pb.token_inputs),
        normalize=pb.normalize if pb.HasField("normalize") else None, dimensions=pb.dimensions,
        truncate=pb.truncate, use_cache=not pb.bypass_cache,
    )


def embed_response_to_pb(result: EmbeddingResult) -> gateway_pb2.EmbedResponse:
    return gateway_pb2.EmbedResponse(
        data=[gateway_pb2.EmbedVector(values=v.tolist(), cached=c) for v, c in zip(result.vectors, result.cached)],
        usage=common_pb2.Usage(prompt_tokens=result.prompt_tokens),
    )
