"""Conversions between Worker protobuf messages and the runner's plain dataclasses."""

from __future__ import annotations

from flashstream.v1 import common_pb2, worker_pb2

from services.common.errors import FlashStreamError
from services.common.pb import error_to_pb, sampling_from_pb
from services.worker.engine import EngineInfo
from services.worker.plan import CachedSeq, NewSeq, SeqError, StepPlan, StepResult


def plan_from_pb(pb: worker_pb2.StepPlan) -> tuple[StepPlan, list[SeqError]]:
    """The plan, and errors for NewSeqs whose sampling parameters are invalid (those are left out)."""
    new_seqs: list[NewSeq] = []
    errors: list[SeqError] = []
    for seq in pb.new_seqs:
        try:
            sampling = sampling_from_pb(seq.sampling)
        except FlashStreamError as exc:
            errors.append(SeqError(seq.seq_id, exc))
            continue
        new_seqs.append(NewSeq(
            seq_id=seq.seq_id, token_ids=list(seq.token_ids), num_prompt_tokens=seq.num_prompt_tokens,
            sampling=sampling, block_ids=list(seq.block_ids), num_computed_tokens=seq.num_computed_tokens,
            num_scheduled_tokens=seq.num_scheduled_tokens,
        ))
    cached = [CachedSeq(s.seq_id, list(s.new_block_ids), s.num_scheduled_tokens) for s in pb.cached_seqs]
    return StepPlan(pb.step_id, new_seqs, cached, list(pb.finished_seq_ids)), errors


def result_to_pb(result: StepResult) -> worker_pb2.StepResult:
    outputs = []
    for out in result.outputs:
        item = worker_pb2.SeqOutput(seq_id=out.seq_id, token_id=out.token_id)
        if out.logprobs is not None:
            lp = out.logprobs
            item.logprob.CopyFrom(common_pb2.TokenLogprob(
                token_id=lp.token_id, logprob=lp.logprob,
                top=[common_pb2.TopLogprob(token_id=t, logprob=v) for t, v in lp.top],
            ))
        outputs.append(item)
    return worker_pb2.StepResult(
        step_id=result.step_id,
        outputs=outputs,
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
        device=info.device, num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        task=info.task, hidden_size=cfg.hidden_size,
    )
