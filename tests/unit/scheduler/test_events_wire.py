"""The scheduler-tokenizer hop's columns: every new token of a step travels as one entry of TokenColumns, in the
order the scheduler emitted them, with logprobs only for the tokens that carry them; ends travel as TokenEvents."""

from __future__ import annotations

import pytest
from flashstream.v1 import scheduler_pb2

from services.common.errors import ErrorCode
from services.common.finish_reason import FinishReason
from services.common.step import TokenLogprobs
from services.scheduler.pb import events_to_pb
from services.scheduler.request_events import NewTokens, RequestDone, RequestFailed

pytestmark = pytest.mark.timeout(10)


def test_tokens_of_many_requests_cross_as_columns_in_emission_order_with_only_the_logprobs_they_carry() -> None:
    events = [
        NewTokens([(0, "a"), (0, "b")], [11, 21], [None, TokenLogprobs(21, -0.25, [(21, -0.25), (4, -1.5)])]),
        NewTokens([(0, "a"), (0, "b")], [12, 22], [None, TokenLogprobs(22, -0.5, [(22, -0.5)])]),
        RequestDone((0, "a"), FinishReason.LENGTH, num_prompt_tokens=3, num_completion_tokens=2, num_cached_tokens=1),
        RequestFailed((0, "c"), ErrorCode.INVALID_ARGUMENT, "seq 9: logits are not finite"),
    ]
    down = scheduler_pb2.SchedulerDown.FromString(events_to_pb(events).SerializeToString())
    assert list(down.tokens.request_ids) == ["a", "b", "a", "b"]
    assert list(down.tokens.token_ids) == [11, 21, 12, 22]
    assert [(lp.index, lp.logprob.token_id, lp.logprob.logprob, [(t.token_id, t.logprob) for t in lp.logprob.top])
            for lp in down.tokens.logprobs] == [(1, 21, -0.25, [(21, -0.25), (4, -1.5)]), (3, 22, -0.5, [(22, -0.5)])]
    assert [(e.request_id, e.WhichOneof("event")) for e in down.events] == [("a", "done"), ("c", "error")]
    done = down.events[0].done
    assert (done.finish_reason, done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.cached_tokens) == (
        int(FinishReason.LENGTH), 3, 2, 1)
    assert (down.events[1].error.code, down.events[1].error.message) == (
        int(ErrorCode.INVALID_ARGUMENT), "seq 9: logits are not finite")


def test_a_step_without_tokens_sends_empty_columns() -> None:
    down = events_to_pb([RequestDone((1, "z"), FinishReason.ABORT)])
    assert (list(down.tokens.request_ids), list(down.tokens.token_ids), len(down.tokens.logprobs)) == ([], [], 0)
    assert [e.request_id for e in down.events] == ["z"]
