"""The scheduler-worker hop's columns: a plan and a result survive the wire exactly, and columns that disagree
are refused with a message rather than misread."""

from __future__ import annotations

import pytest
from flashstream.v1 import common_pb2, worker_pb2

from services.common.errors import InvalidArgument
from services.common.sampling import SamplingParams
from services.scheduler import plan as scheduler_plan
from services.scheduler.pb import plan_to_pb, result_from_pb
from services.worker import plan as worker_plan
from services.worker.pb import plan_from_pb, result_to_pb
from services.worker.sampling.types import TokenLogprobs


def test_a_plan_crosses_the_wire_with_every_sequence_and_block_in_order() -> None:
    plan = scheduler_plan.StepPlan(7, finished_seq_ids=[3, 9])
    plan.new_seqs.append(scheduler_plan.NewSeq(12, [5, 6, 7], 3, SamplingParams(max_tokens=4), [40], 0, 3))
    plan.cached_seqs += [scheduler_plan.CachedSeq(1, [], 1), scheduler_plan.CachedSeq(2, [17, 18], 5),
                         scheduler_plan.CachedSeq(4, [30], 1)]
    wire = worker_pb2.StepPlan.FromString(plan_to_pb(plan).SerializeToString())
    got, errors = plan_from_pb(wire)
    assert errors == []
    assert (got.step_id, got.finished_seq_ids) == (7, [3, 9])
    assert [(c.seq_id, c.new_block_ids, c.num_scheduled_tokens) for c in got.cached_seqs] == [
        (1, [], 1), (2, [17, 18], 5), (4, [30], 1)]
    assert [(n.seq_id, n.token_ids, n.block_ids, n.num_scheduled_tokens) for n in got.new_seqs] == [
        (12, [5, 6, 7], [40], 3)]


def test_cached_columns_whose_block_counts_do_not_add_up_are_refused() -> None:
    wire = worker_pb2.StepPlan(step_id=1, cached_seqs=worker_pb2.CachedSeqs(
        seq_ids=[1, 2], num_scheduled_tokens=[1, 1], num_new_blocks=[1, 1], new_block_ids=[5]))
    with pytest.raises(InvalidArgument, match="2 ids, 2 token counts, 2 block counts adding up to 2 for 1 block ids"):
        plan_from_pb(wire)


def test_a_result_crosses_the_wire_with_its_tokens_and_only_the_logprobs_asked_for() -> None:
    result = worker_plan.StepResult(5, [
        worker_plan.SeqOutput(1, 101),
        worker_plan.SeqOutput(2, 202, TokenLogprobs(token_id=202, logprob=-0.5, top=[(202, -0.5), (7, -1.25)])),
        worker_plan.SeqOutput(3, 303),
    ], [], 0.01)
    got = result_from_pb(worker_pb2.StepResult.FromString(result_to_pb(result).SerializeToString()))
    assert [(o.seq_id, o.token_id) for o in got.outputs] == [(1, 101), (2, 202), (3, 303)]
    assert [o.logprob is None for o in got.outputs] == [True, False, True]
    assert got.outputs[1].logprob == common_pb2.TokenLogprob(
        token_id=202, logprob=-0.5, top=[common_pb2.TopLogprob(token_id=202, logprob=-0.5),
                                         common_pb2.TopLogprob(token_id=7, logprob=-1.25)])
