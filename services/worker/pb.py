"""Conversions between Worker protobuf messages and the runner's plain dataclasses."""

from __future__ import annotations


from flashstream.v1 import worker_pb2

from services.common.errors import InvalidArgument
from services.common.pb import error_to_pb, logprobs_to_pb, sampling_from_pb
from services.common.step import CachedSeqs, NewSeq, StepPlan, StepResult
from services.worker.engine import EngineInfo


def plan_from_pb(pb: worker_pb2.StepPlan) -> StepPlan:
    """The plan as the scheduler sent it. Sampling parameters were validated at the gateway and are not checked
    again; the sequence table checks what the worker's memory depends on (ids, blocks, lengths)."""
    new_seqs = [
        NewSeq(
            seq_id=seq.seq_id, token_ids=list(seq.token_ids), num_prompt_tokens=seq.num_prompt_tokens,
            sampling=sampling_from_pb(seq.sampling), block_ids=list(seq.block_ids),
            num_computed_tokens=seq.num_computed_tokens, num_scheduled_tokens=seq.num_scheduled_tokens,
            traceparent=seq.traceparent,
        )
        for seq in pb.new_seqs
    ]
    return StepPlan(pb.step_id, new_seqs, cached_seqs_from_pb(pb.cached_seqs), list(pb.finished_seq_ids))


def cached_seqs_from_pb(pb: worker_pb2.CachedSeqs) -> CachedSeqs:
    """The columns as they came (a block count that does not add up raises InvalidArgument)."""
    seq_ids, num_tokens, counts = list(pb.seq_ids), list(pb.num_scheduled_tokens), list(pb.num_new_blocks)
    blocks = list(pb.new_block_ids)
    if not len(seq_ids) == len(num_tokens) == len(counts) or sum(counts) != len(blocks):
        raise InvalidArgument(
            f"cached_seqs columns disagree: {len(seq_ids)} ids, {len(num_tokens)} token counts, "
            f"{len(counts)} block counts adding up to {sum(counts)} for {len(blocks)} block ids")
    return CachedSeqs(seq_ids, num_tokens, counts, blocks)


def result_to_pb(result: StepResult) -> worker_pb2.StepResult:
    columns = result.sampled
    sampled = worker_pb2.SampledTokens(seq_ids=columns.seq_ids, token_ids=columns.token_ids)
    logprobs = columns.logprobs
    if logprobs.count(None) != len(logprobs):
        for index, lp in enumerate(logprobs):
            if lp is not None:
                sampled.logprobs.add(index=index, logprob=logprobs_to_pb(lp))
    return worker_pb2.StepResult(
        step_id=result.step_id,
        sampled=sampled,
        errors=[worker_pb2.SeqError(seq_id=e.seq_id, error=error_to_pb(e.error)) for e in result.errors],
        step_time_s=result.step_time_s,
    )


def info_to_pb(info: EngineInfo) -> worker_pb2.WorkerInfo:
    cfg = info.model
    return worker_pb2.WorkerInfo(
        worker_id=info.worker_id, model_id=info.model_id, model_revision=info.model_revision,
        architecture=cfg.architecture, vocab_size=cfg.vocab_size, max_model_len=info.max_model_len,
        eos_token_ids=list(cfg.eos_token_ids), block_size=info.block_size, num_kv_blocks=info.num_kv_blocks,
        max_num_seqs=info.max_num_seqs, max_num_batched_tokens=info.max_num_batched_tokens, dtype=info.dtype,
        device=info.device, task=info.task, hidden_size=cfg.hidden_size,
    )
