"""The scheduler-worker hop's columns: a plan and a result survive the wire exactly, and columns that disagree
are refused with a message rather than misread."""

from __future__ import annotations

import pytest
from flashstream.v1 import common_pb2, worker_pb2

from services.common.errors import ErrorCode, InvalidArgument
from services.common.sampling import SamplingParams
from services.common.step import CachedSeqs, NewSeq, SampledTokens, SeqError, StepPlan, StepResult, TokenLogprobs
from services.scheduler.pb import plan_to_pb, result_from_pb
from services.worker.pb import plan_from_pb, result_to_pb


def test_a_plan_crosses_the_wire_with_every_sequence_and_block_in_order() -> None:
    plan = StepPlan(7, finished_seq_ids=[3, 9])
    plan.new_seqs.append(NewSeq(12, [5, 6, 7], 3, SamplingParams(max_tokens=4), [40], 0, 3))
    plan.cached_seqs = CachedSeqs.of([(1, [], 1), (2, [17, 18], 5), (4, [30], 1)])
    wire = worker_pb2.StepPlan.FromString(plan_to_pb(plan).SerializeToString())
    got = plan_from_pb(wire)
    assert (got.step_id, got.finished_seq_ids) == (7, [3, 9])
    assert got.cached_seqs == CachedSeqs([1, 2, 4], [1, 5, 1], [0, 2, 1], [17, 18, 30])
    assert list(got.cached_seqs.rows()) == [(1, [], 1), (2, [17, 18], 5), (4, [30], 1)]
    assert [(n.seq_id, n.token_ids, n.block_ids, n.num_scheduled_tokens) for n in got.new_seqs] == [
        (12, [5, 6, 7], [40], 3)]


def test_cached_columns_whose_block_counts_do_not_add_up_are_refused() -> None:
    wire = worker_pb2.StepPlan(step_id=1, cached_seqs=worker_pb2.CachedSeqs(
        seq_ids=[1, 2], num_scheduled_tokens=[1, 1], num_new_blocks=[1, 1], new_block_ids=[5]))
    with pytest.raises(InvalidArgument, match="2 ids, 2 token counts, 2 block counts adding up to 2 for 1 block ids"):
        plan_from_pb(wire)


def test_a_result_crosses_the_wire_unchanged_with_only_the_logprobs_asked_for_and_its_errors() -> None:
    logprobs = TokenLogprobs(token_id=202, logprob=-0.5, top=[(202, -0.5), (7, -1.25)])
    result = StepResult(5, SampledTokens([1, 2, 3], [101, 202, 303], [None, logprobs, None]),
                        [SeqError(4, InvalidArgument("seq 4: logits are not finite"))], 0.01)
    got = result_from_pb(worker_pb2.StepResult.FromString(result_to_pb(result).SerializeToString()))
    assert got.sampled == SampledTokens([1, 2, 3], [101, 202, 303], [None, logprobs, None])
    assert [(e.seq_id, e.error.code, e.error.message) for e in got.errors] == [
        (4, ErrorCode.INVALID_ARGUMENT, "seq 4: logits are not finite")]
    assert (got.step_id, got.step_time_s) == (5, 0.01)


def test_an_error_code_this_version_does_not_know_reads_as_unknown() -> None:
    wire = worker_pb2.StepResult(step_id=1, errors=[worker_pb2.SeqError(seq_id=3, error=common_pb2.Error(
        code=99, message="from a newer worker"))])
    error = result_from_pb(wire).errors[0]
    assert (error.seq_id, error.error.code, error.error.message) == (3, ErrorCode.UNKNOWN, "from a newer worker")
