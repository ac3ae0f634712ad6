"""With the next plan known, the runner queues the next step behind the current one (input tokens the current
step samples are taken on the device); every result and the table afterwards equal the sequential path's, whatever
the plans do and however the rows sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import ErrorCode
from services.common.sampling import SamplingParams
from services.common.step import CachedSeqs, StepPlan, StepResult
from tests.unit.worker.helpers import Driver, cpu_engine, make_checkpoint

PROMPTS = {1: [5, 17, 99, 3, 250, 41, 7], 2: [9, 8, 7, 6, 5], 3: [(i * 37) % 256 for i in range(11)]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:  # noqa: ANN001
    return make_checkpoint("llama", tmp_path_factory.mktemp("llama"))


def _plans(engine, num_kv_blocks: int) -> list[StepPlan]:  # noqa: ANN001
    """Seqs 1 and 2 decode; seq 2 finishes at step 6; seq 3 arrives at step 8 (prefill in two chunks); an
    unknown id at step 11 and a block out of range for seq 1 at step 14 fail alone; 18 steps in all."""
    d = Driver(engine)
    plans = [d.plan([d.new_seq(1, PROMPTS[1], 7), d.new_seq(2, PROMPTS[2], 5)])]
    live = [1, 2]
    for step in range(2, 19):
        new, finished, extra = [], [], []
        if step == 6:
            live, finished = [1], [2]
        if step == 8:
            new = [d.new_seq(3, PROMPTS[3], 6)]
        cached = [d.cached_seq(s, 1) for s in live]
        if step == 9:
            cached.append(d.cached_seq(3, 5))
            live = [1, 3]
        if step == 11:
            extra = [(42, [], 1)]
        if step == 14:
            cached = [(1, [num_kv_blocks + 5], 1)] + cached[1:]
            live = [3]
        plans.append(d.plan(new, cached + extra, finished))
    return plans


def _summary(results: list[StepResult]) -> list[tuple]:
    return [(r.step_id, list(zip(r.sampled.seq_ids, r.sampled.token_ids)),
             sorted((e.seq_id, e.error.code, e.error.message) for e in r.errors)) for r in results]


def _run(engine, plans: list[StepPlan], mode: str) -> list[StepResult]:  # noqa: ANN001
    runner = engine.runner
    results = []
    for i, plan in enumerate(plans):
        nxt = plans[i + 1] if i + 1 < len(plans) else None
        if mode == "sequential":
            results.append(runner.step(plan))
        elif mode == "next_plan":
            results.append(runner.step(plan, next_plan=nxt))
        else:  # the next plan arrives through a source that the runner polls while the step runs
            results.append(runner.step(plan, wait_next=lambda timeout, nxt=nxt: nxt))
    return results


@pytest.mark.parametrize("mode", ["next_plan", "wait_next"])
def test_overlapped_steps_give_the_sequential_results_through_finish_arrival_and_errors(folder: Path, mode: str) -> None:
    seq_engine, ovl_engine = cpu_engine(folder, num_kv_blocks=64), cpu_engine(folder, num_kv_blocks=64)
    sequential = _run(seq_engine, _plans(seq_engine, 64), "sequential")
    overlapped = _run(ovl_engine, _plans(ovl_engine, 64), mode)
    assert _summary(overlapped) == _summary(sequential)
    errors = {(r.step_id, e.seq_id, e.error.code) for r in sequential for e in r.errors}
    assert errors == {(11, 42, ErrorCode.NOT_FOUND), (14, 1, ErrorCode.INVALID_ARGUMENT)}
    assert [len(r.sampled) for r in sequential] == [2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1]
    # Every step after the first is queued ahead: finishes, new sequences, prefill chunks and failed rows included.
    assert ovl_engine.runner.num_overlapped_steps == 17
    assert seq_engine.runner.num_overlapped_steps == 0
    assert {k: v.token_ids for k, v in ovl_engine.runner.table.seqs.items()} == \
        {k: v.token_ids for k, v in seq_engine.runner.table.seqs.items()}
    assert ovl_engine.runner.table.ahead is None


class FailingExecutor:
    """The model executor, failing seq 1's step at one position: in `run`/`launch` or in `collect`."""

    def __init__(self, inner, position: int, where: str) -> None:  # noqa: ANN001
        self.inner, self.position, self.where = inner, position, where
        self.launched: dict[int, list] = {}

    def _check(self, scheduled) -> None:  # noqa: ANN001
        if any(s.state.seq_id == 1 and s.state.num_computed_tokens == self.position for s in scheduled):
            raise RuntimeError("device lost")

    def run(self, scheduled):  # noqa: ANN001, ANN201
        self._check(scheduled)
        return self.inner.run(scheduled)

    def can_launch(self, scheduled) -> bool:  # noqa: ANN001
        return self.inner.can_launch(scheduled)

    def launch(self, scheduled, prev=None):  # noqa: ANN001, ANN201
        if self.where == "launch":
            self._check(scheduled)
        launched = self.inner.launch(scheduled, prev)
        self.launched[id(launched)] = [(s, s.state.num_computed_tokens) for s in scheduled]
        return launched

    def waited_for_work(self) -> None:
        self.inner.waited_for_work()

    def collect(self, launched):  # noqa: ANN001, ANN201
        if self.where == "collect" and any(s.state.seq_id == 1 and pos == self.position
                                           for s, pos in self.launched.pop(id(launched))):
            raise RuntimeError("device lost")
        return self.inner.collect(launched)


@pytest.mark.parametrize("where", ["launch", "collect"])
def test_a_failed_launched_step_fails_its_sequences_as_the_sequential_path_does(folder: Path, where: str) -> None:
    engines = [cpu_engine(folder, num_kv_blocks=64) for _ in range(2)]
    for engine in engines:
        engine.runner.executor = FailingExecutor(engine.runner.executor, len(PROMPTS[1]) + 3, where)
    d = Driver(engines[0])
    plans = [d.plan([d.new_seq(1, PROMPTS[1], 7), d.new_seq(2, PROMPTS[2], 5)])]
    plans += [d.plan(cached_seqs=[d.cached_seq(1, 1), d.cached_seq(2, 1)]) for _ in range(7)]
    sequential = _summary(_run(engines[0], plans, "sequential"))
    overlapped = _summary(_run(engines[1], plans, "next_plan"))
    assert overlapped == sequential
    failed = [(step, errors) for step, _, errors in sequential if errors]
    assert [(step, [e[:2] for e in errors]) for step, errors in failed] == [
        (5, [(1, ErrorCode.INTERNAL), (2, ErrorCode.INTERNAL)]), (6, [(1, ErrorCode.NOT_FOUND), (2, ErrorCode.NOT_FOUND)]),
        (7, [(1, ErrorCode.NOT_FOUND), (2, ErrorCode.NOT_FOUND)]), (8, [(1, ErrorCode.NOT_FOUND), (2, ErrorCode.NOT_FOUND)])]
    assert engines[1].runner.num_overlapped_steps >= 2


def test_a_plan_other_than_the_one_applied_ahead_is_refused(folder: Path) -> None:
    engine = cpu_engine(folder)
    d = Driver(engine)
    first = d.plan([d.new_seq(1, PROMPTS[1], 7)])
    second, third = (d.plan(cached_seqs=[d.cached_seq(1, 1)]) for _ in range(2))
    engine.runner.step(first)
    engine.runner.step(second, next_plan=third)
    with pytest.raises(ValueError, match="applied ahead"):
        engine.runner.step(second)


def _sampled_plans(engine, params: dict[int, SamplingParams]) -> list[StepPlan]:  # noqa: ANN001
    """Seqs 1 and 2 decode from the start; seq 3 arrives at step 4 with its prompt in two chunks; 12 steps."""
    d = Driver(engine)
    first = [d.new_seq(1, PROMPTS[1], 7), d.new_seq(2, PROMPTS[2], 5)]
    plans = [d.plan(first)]
    live = [1, 2]
    for step in range(2, 13):
        new = [d.new_seq(3, PROMPTS[3], 6)] if step == 4 else []
        cached = [d.cached_seq(s, 1) for s in live]
        if step == 5:
            cached.append(d.cached_seq(3, 5))
            live = [1, 2, 3]
        plans.append(d.plan(new, cached))
    for plan in plans:
        for new in plan.new_seqs:
            new.sampling = params[new.seq_id]
    return plans


def _summary_with_logprobs(results: list[StepResult]) -> list[tuple]:
    return [(r.step_id, [(seq_id, token_id, None if lp is None else (round(lp.logprob, 5), [t for t, _ in lp.top]))
                         for seq_id, token_id, lp in r.sampled.rows()])
            for r in results]


@pytest.mark.parametrize("penalised", [False, True])
def test_sampled_rows_overlap_and_match_the_sequential_path_token_for_token(folder: Path, penalised: bool) -> None:
    params = {
        1: SamplingParams(max_tokens=32, temperature=0.9, top_p=0.95, seed=11, logprobs=2, ignore_eos=True),
        2: SamplingParams(max_tokens=32, temperature=1.0, top_k=20, seed=5, min_tokens=4, ignore_eos=True),
        3: SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True,
                          repetition_penalty=1.3 if penalised else 1.0),
    }
    seq_engine, ovl_engine = cpu_engine(folder, num_kv_blocks=64), cpu_engine(folder, num_kv_blocks=64)
    sequential = _run(seq_engine, _sampled_plans(seq_engine, params), "sequential")
    overlapped = _run(ovl_engine, _sampled_plans(ovl_engine, params), "next_plan")
    assert _summary_with_logprobs(overlapped) == _summary_with_logprobs(sequential)
    assert [len(r.sampled) for r in sequential] == [2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3]
    # Seq 3's penalty reads its own tokens, so once it runs (step 4 on) its steps wait for the host.
    assert ovl_engine.runner.num_overlapped_steps == (3 if penalised else 11)
    assert {k: v.token_ids for k, v in ovl_engine.runner.table.seqs.items()} == \
        {k: v.token_ids for k, v in seq_engine.runner.table.seqs.items()}


class WaitRecordingExecutor(FailingExecutor):
    """The model executor, recording the steps before which the runner said the device waited for work."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        super().__init__(inner, position=-1, where="none")
        self.calls = 0

    def waited_for_work(self) -> None:
        self.calls += 1
        super().waited_for_work()


def test_only_a_plan_that_brings_every_sequence_the_worker_holds_counts_as_a_wait_for_work(folder: Path) -> None:
    engine = cpu_engine(folder, num_kv_blocks=64)
    executor = engine.runner.executor = WaitRecordingExecutor(engine.runner.executor)
    d = Driver(engine)
    calls = []
    for plan in (d.plan([d.new_seq(1, PROMPTS[1], 7)]),                       # first plan: waited
                 d.plan(cached_seqs=[d.cached_seq(1, 1)]),                   # busy
                 d.plan([d.new_seq(2, PROMPTS[2], 5)], [d.cached_seq(1, 1)]),  # busy: seq 1 still held
                 d.plan(cached_seqs=[d.cached_seq(2, 1)], finished=[1]),     # busy
                 d.plan([d.new_seq(3, PROMPTS[3], 11)], finished=[2])):      # all others finished: waited
        engine.runner.step(plan)
        calls.append(executor.calls)
    assert calls == [1, 1, 1, 1, 2]
