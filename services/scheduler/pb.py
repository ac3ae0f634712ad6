"""Conversions between the core's plain dataclasses and the scheduler and worker protobuf messages."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from flashstream.v1 import common_pb2, scheduler_pb2, worker_pb2

from services.common.pb import error_from_pb, logprobs_from_pb, logprobs_to_pb, sampling_from_pb, sampling_to_pb
from services.common.step import SampledTokens, SeqError, StepPlan, StepResult, TokenLogprobs
from services.scheduler.config import WorkerLimits
from services.scheduler.engine_state import EngineState
from services.scheduler.request_events import Event, NewTokens, Request, RequestDone


def limits_from_info(info: worker_pb2.WorkerInfo) -> WorkerLimits:
    return WorkerLimits(
        block_size=info.block_size,
        num_kv_blocks=info.num_kv_blocks,
        max_num_seqs=info.max_num_seqs,
        max_num_batched_tokens=info.max_num_batched_tokens,
        max_model_len=info.max_model_len,
        eos_token_ids=tuple(info.eos_token_ids),
        worker_id=info.worker_id,
        model_id=info.model_id,
        model_revision=info.model_revision,
        vocab_size=info.vocab_size,
    )


def request_from_pb(key: Hashable, pb: scheduler_pb2.TokenRequest) -> Request:
    """The Request as the tokenizer stage sent it: sampling validated at the gateway, prompt length and ids checked
    by the tokenizer stage (not checked again here)."""
    return Request(
        key=key,
        prompt_token_ids=tuple(pb.prompt_token_ids),
        params=sampling_from_pb(pb.sampling),
        priority=pb.priority,
        deadline=pb.deadline_unix_s,
    )


def plan_to_pb(plan: StepPlan) -> worker_pb2.StepPlan:
    pb = worker_pb2.StepPlan(step_id=plan.step_id, finished_seq_ids=plan.finished_seq_ids)
    for new in plan.new_seqs:
        pb.new_seqs.append(worker_pb2.NewSeq(
            seq_id=new.seq_id,
            token_ids=new.token_ids,
            num_prompt_tokens=new.num_prompt_tokens,
            sampling=sampling_to_pb(new.sampling),
            block_ids=new.block_ids,
            num_computed_tokens=new.num_computed_tokens,
            num_scheduled_tokens=new.num_scheduled_tokens,
            traceparent=new.traceparent,
        ))
    cached = plan.cached_seqs
    if cached:
        columns = pb.cached_seqs
        columns.seq_ids.extend(cached.seq_ids)
        columns.num_scheduled_tokens.extend(cached.num_scheduled_tokens)
        columns.num_new_blocks.extend(cached.num_new_blocks)
        columns.new_block_ids.extend(cached.new_block_ids)
    return pb


def result_from_pb(pb: worker_pb2.StepResult) -> StepResult:
    columns = pb.sampled
    seq_ids, token_ids = list(columns.seq_ids), list(columns.token_ids)
    logprobs: list[TokenLogprobs | None] = [None] * len(seq_ids)
    for item in columns.logprobs:
        if item.index < len(logprobs):
            logprobs[item.index] = logprobs_from_pb(item.logprob)
    return StepResult(
        step_id=pb.step_id,
        sampled=SampledTokens(seq_ids, token_ids, logprobs),
        errors=[SeqError(e.seq_id, error_from_pb(e.error)) for e in pb.errors],
        step_time_s=pb.step_time_s,
    )


def events_to_pb(events: Iterable[Event]) -> scheduler_pb2.SchedulerDown:
    """One SchedulerDown for many events: the new tokens as columns, the ends as TokenEvents. Keys are
    (stream, request_id) pairs: the request id goes on the wire."""
    down = scheduler_pb2.SchedulerDown()
    request_ids: list[str] = []
    token_ids: list[int] = []
    columns = down.tokens
    for event in events:
        if type(event) is NewTokens:
            if event.logprobs.count(None) != len(event.logprobs):
                for index, logprobs in enumerate(event.logprobs, start=len(token_ids)):
                    if logprobs is not None:
                        columns.logprobs.add(index=index, logprob=logprobs_to_pb(logprobs))
            request_ids += [key[1] for key in event.keys]
            token_ids += event.token_ids
        elif type(event) is RequestDone:
            down.events.add(request_id=event.key[1], done=common_pb2.Done(
                finish_reason=int(event.finish_reason),
                usage=common_pb2.Usage(
                    prompt_tokens=event.num_prompt_tokens,
                    completion_tokens=event.num_completion_tokens,
                    cached_tokens=event.num_cached_tokens,
                ),
                latency=common_pb2.LatencyBreakdown(
                    queue_s=event.queue_s, prefill_s=event.prefill_s, decode_s=event.decode_s
                ),
            ))
        else:
            down.events.add(request_id=event.key[1],
                            error=common_pb2.Error(code=int(event.code), message=event.message))
    columns.request_ids.extend(request_ids)
    columns.token_ids.extend(token_ids)
    return down


def engine_state_to_pb(state: EngineState) -> common_pb2.EngineState:
    totals = state.totals
    return common_pb2.EngineState(
        time_unix_s=state.time_unix_s,
        model_id=state.model_id,
        num_running=state.num_running,
        num_waiting=state.num_waiting,
        kv_cache_usage=state.kv_cache_usage,
        num_steps=totals.num_steps,
        num_step_tokens=totals.num_step_tokens,
        num_generated_tokens=totals.num_generated_tokens,
        num_prefix_query_tokens=totals.num_prefix_query_tokens,
        num_prefix_hit_tokens=totals.num_prefix_hit_tokens,
        workers=[common_pb2.WorkerEngineState(address=w.address, num_running=w.num_running,
                                              num_waiting=w.num_waiting, kv_cache_usage=w.kv_cache_usage)
                 for w in state.workers],
    )
