"""Guided decoding in the worker: compiled once per spec, one matcher per sequence that survives preemption and
prefix-cache hits, masks only on guided rows, correct with the next plan applied ahead, bad specs fail alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.common.errors import ErrorCode
from services.common.sampling import Guided, SamplingParams
from services.common.step import CachedSeqs, NewSeq, StepPlan
from services.demo.build import build_demo_model
from tests.unit.worker.guided_helpers import EOS_ID, GuidedRun, InFlightRun, decode
from tests.unit.worker.helpers import cpu_engine

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 999},
                                           "tag": {"enum": ["red", "blue"]}}, "required": ["n", "tag"]}
PROMPT = [7, 300, 41, 12, 555, 90, 18, 402, 33, 71, 9, 250, 600, 13, 87, 45, 301]  # 17 tokens: one full block


def _params(guided: Guided | None, **kw) -> SamplingParams:  # noqa: ANN003
    return SamplingParams(max_tokens=kw.pop("max_tokens", 80), guided=guided, **kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("model") / "demo")


def test_each_spec_is_compiled_once_and_served_from_the_cache_after(folder: Path) -> None:
    engine = cpu_engine(folder)
    schema = Guided("json_schema", json.dumps(SCHEMA))
    run = GuidedRun(engine)
    run.run({1: (PROMPT, _params(schema)), 2: (PROMPT[:5], _params(schema, temperature=1.0, seed=3)),
             3: (PROMPT, _params(Guided("regex", "(yes|no)")))})
    assert run.errors == {}
    grammars = engine.runner.grammars
    assert (grammars.num_compiled, grammars.num_hits, len(grammars)) == (2, 1, 2)
    for seq_id in (1, 2):
        assert json.loads(decode(folder, run.outputs[seq_id]))["tag"] in ("red", "blue")
    assert decode(folder, run.outputs[3]) in ("yes", "no")
    run.run({4: (PROMPT, _params(schema))})
    assert (grammars.num_compiled, grammars.num_hits) == (2, 2)


def test_rows_without_a_grammar_sample_exactly_as_in_a_batch_without_grammars(folder: Path) -> None:
    plain = {i: (PROMPT[i:], _params(None, max_tokens=12, temperature=0.8, seed=i, ignore_eos=True)) for i in (1, 2)}
    alone = GuidedRun(cpu_engine(folder)).run(dict(plain))
    mixed_run = GuidedRun(cpu_engine(folder))
    mixed = mixed_run.run({**plain, 3: (PROMPT, _params(Guided("json_object"), temperature=0.8, seed=5))})
    assert mixed_run.errors == {}
    assert (mixed[1], mixed[2]) == (alone[1], alone[2])
    assert isinstance(json.loads(decode(folder, mixed[3])), dict)


@pytest.mark.parametrize("num_cached", [0, 16])
def test_a_resent_sequence_resumes_its_grammar_from_its_generated_tokens(folder: Path, num_cached: int) -> None:
    """Preemption sends the sequence again with its generated tokens (and, on a prefix-cache hit, some of its KV
    already computed); the matcher replays them and greedy output continues exactly as without the break."""
    guided = Guided("json_schema", json.dumps(SCHEMA))
    whole = GuidedRun(cpu_engine(folder)).run({1: (PROMPT, _params(guided, repetition_penalty=1.2))})[1]
    assert whole[-1] == EOS_ID and len(whole) > 6
    engine = cpu_engine(folder)
    first = GuidedRun(engine).run({1: (PROMPT, _params(guided, repetition_penalty=1.2, max_tokens=5))})[1]
    assert first == whole[:5]
    # Resent: same blocks (the first holds the prompt's first 16 tokens, computed on a prefix-cache hit).
    tokens = PROMPT + first
    params = _params(guided, repetition_penalty=1.2)
    resent = NewSeq(1, tokens, len(PROMPT), params, list(range(10)), num_cached, len(tokens) - num_cached)
    out = list(engine.runner.step(StepPlan(100, [resent], CachedSeqs(), [1])).sampled.token_ids)
    step = 101
    while out[-1] != EOS_ID:
        result = engine.runner.step(StepPlan(step, [], CachedSeqs.of([(1, [], 1)]), []))
        assert result.errors == []
        out.append(result.sampled.token_ids[0])
        step += 1
    assert first + out == whole


def test_a_resent_sequence_whose_tokens_break_the_grammar_fails_alone(folder: Path) -> None:
    engine = cpu_engine(folder)
    guided = Guided("regex", "[0-9]+")
    bad = NewSeq(1, PROMPT + [94], len(PROMPT), _params(guided), list(range(3)), 0, len(PROMPT) + 1)  # 94 is "{"
    good = NewSeq(2, PROMPT, len(PROMPT), _params(guided), list(range(3, 6)), 0, len(PROMPT))
    result = engine.runner.step(StepPlan(1, [bad, good], CachedSeqs(), []))
    assert [(e.seq_id, e.error.code, e.error.message) for e in result.errors] == [
        (1, ErrorCode.INVALID_ARGUMENT, "generated token 0 (id 94) does not follow the request's guided regex")]
    assert decode(folder, [result.sampled.token_ids[0]]).isdigit()


def test_a_spec_that_does_not_compile_fails_its_sequence_alone(folder: Path) -> None:
    run = GuidedRun(cpu_engine(folder))
    out = run.run({1: (PROMPT, _params(Guided("grammar", 'root ::= "a" | b'))),
                   2: (PROMPT, _params(Guided("regex", "[ab]{3}")))})
    assert run.errors == {1: 'guided grammar does not compile: EBNF parser error at line 1, column 16: Rule "b" is '
                             'not defined'}
    assert re.fullmatch("[ab]{3}", decode(folder, out[2]))


def test_regex_and_ebnf_outputs_match_their_grammar(folder: Path) -> None:
    run = GuidedRun(cpu_engine(folder))
    ebnf = 'root ::= "(" item ("," item)* ")"\nitem ::= [0-9] | "x"'
    out = run.run({
        i: (PROMPT[i:], _params(guided, temperature=1.2, seed=i))
        for i, guided in enumerate([Guided("regex", r"[a-f]{2,5}-\d\d"), Guided("grammar", ebnf)] * 4)
    })
    assert run.errors == {}
    for i, tokens in out.items():
        text = decode(folder, tokens)
        pattern = r"[a-f]{2,5}-\d\d" if i % 2 == 0 else r"\((?:[0-9]|x)(?:,(?:[0-9]|x))*\)"
        if tokens[-1] == EOS_ID:
            assert re.fullmatch(pattern, text), (i, text)


def _overlap_plans() -> list[StepPlan]:
    """Seq 1 (sampled, seeded) decodes alone for four steps, so its steps are queued ahead; seq 2 (guided to an
    array of 20 or more colours, which six tokens cannot finish; sampled) arrives at step 5, decodes beside it
    and finishes at step 11."""
    colours = {"type": "array", "items": {"enum": ["red", "blue", "green"]}, "minItems": 20}
    digits = _params(Guided("json_schema", json.dumps(colours)), max_tokens=60, temperature=1.0, seed=3)
    plain = _params(None, ignore_eos=True, temperature=1.0, seed=1)
    plans = [StepPlan(1, [NewSeq(1, PROMPT, len(PROMPT), plain, list(range(8)), 0, 17)],
                      CachedSeqs(), [])]
    for step in range(2, 14):
        new = [NewSeq(2, PROMPT[:6], 6, digits, list(range(8, 12)), 0, 6)] if step == 5 else []
        cached = [(1, [], 1)] + ([(2, [], 1)] if 5 < step < 11 else [])
        plans.append(StepPlan(step, new, CachedSeqs.of(cached), [2] if step == 11 else []))
    return plans


def test_guided_sequences_give_the_sequential_results_with_the_next_plan_applied_ahead(folder: Path) -> None:
    sequential, overlapped = cpu_engine(folder), cpu_engine(folder)
    plans_a, plans_b = _overlap_plans(), _overlap_plans()
    seq_results = [sequential.runner.step(p) for p in plans_a]
    ovl_results = [overlapped.runner.step(p, next_plan=plans_b[i + 1] if i + 1 < len(plans_b) else None)
                   for i, p in enumerate(plans_b)]

    def summary(results):  # noqa: ANN001, ANN202
        return [(list(zip(r.sampled.seq_ids, r.sampled.token_ids)), r.errors) for r in results]

    assert summary(ovl_results) == summary(seq_results)
    assert overlapped.runner.num_overlapped_steps >= 3  # seq 1's lone steps went ahead on the device path
    guided = [token_id for r in seq_results for seq_id, token_id, _ in r.sampled.rows() if seq_id == 2]
    assert len(guided) == 6 and decode(folder, guided).startswith('["')


def test_a_step_scheduled_past_the_grammars_end_runs_unmasked_without_error(folder: Path) -> None:
    """With two steps in flight the scheduler may schedule one more step before it has seen EOS."""
    engine = cpu_engine(folder)
    out = GuidedRun(engine).run({1: (PROMPT, _params(Guided("regex", "(yes|no)")))})[1]
    assert out[-1] == EOS_ID
    state = engine.runner.table.seqs[1]
    assert state.grammar.ended
    mate = NewSeq(2, PROMPT, len(PROMPT), _params(Guided("regex", "[0-9]{30}")), list(range(30, 33)), 0, 17)
    result = engine.runner.step(StepPlan(500, [mate], CachedSeqs.of([(1, [], 1)]), []))
    # The one-token row (seq 1) runs first, then the new sequence's prompt.
    assert result.errors == [] and result.sampled.seq_ids == [1, 2]
    assert decode(folder, [result.sampled.token_ids[1]]).isdigit()


def _in_flight(folder: Path, overlap: bool, requests: dict, preempt: dict[int, int] | None = None,
               executor=None) -> tuple[InFlightRun, object]:  # noqa: ANN001
    engine = cpu_engine(folder)
    if executor is not None:
        engine.runner.executor = executor(engine.runner.executor)
    run = InFlightRun(engine, overlap=overlap)
    run.run(requests, preempt)
    return run, engine


def mixed_requests() -> dict[int, tuple[list[int], SamplingParams]]:
    """Guided rows (greedy and seeded sampled; JSON schema, regex, EBNF cut at max_tokens) beside a plain row."""
    schema = Guided("json_schema", json.dumps(SCHEMA))
    ebnf = 'root ::= "(" item ("," item)* ")"\nitem ::= [0-9] | "x"'
    return {
        1: (PROMPT, _params(schema)),
        2: (PROMPT[:-1], _params(schema, temperature=1.0, seed=3)),
        3: (PROMPT[1:], _params(Guided("regex", r"[a-f]{2,5}-\d\d"), temperature=0.8, top_p=0.9, seed=4)),
        4: (PROMPT, _params(None, max_tokens=30, temperature=1.0, seed=9, ignore_eos=True)),
        5: (PROMPT[:-2], _params(Guided("grammar", ebnf), max_tokens=12, temperature=1.2, seed=5)),
    }


def test_guided_steps_queued_ahead_with_two_plans_in_flight_give_the_sequential_tokens(folder: Path) -> None:
    """Each next step's forward pass is queued before the current step's tokens are read; its guided rows' masks
    are filled once they are. Seq 2 is preempted at step 4 and sent again at step 6 with a prefix-cache hit."""
    requests = mixed_requests()
    sequential, _ = _in_flight(folder, False, requests, preempt={2: 4})
    overlapped, engine = _in_flight(folder, True, requests, preempt={2: 4})
    assert overlapped.errors == sequential.errors == {}
    assert overlapped.steps == sequential.steps
    # Every plan after the first was queued on the device ahead of its turn, guided rows and the resend included.
    assert engine.runner.num_overlapped_steps == overlapped.step_id - 1
    out = overlapped.outputs
    for seq_id in (1, 2):
        assert out[seq_id][-1] == EOS_ID
        assert json.loads(decode(folder, out[seq_id]))["tag"] in ("red", "blue")
    assert out[3][-1] == EOS_ID and re.fullmatch(r"[a-f]{2,5}-\d\d", decode(folder, out[3]))
    assert len(out[4]) == 30
    assert out[5][-1] == EOS_ID or len(out[5]) == 12
    assert decode(folder, out[5]).startswith("(")


class RefusedToken:
    """The model executor, except that seq 1's third sampled token becomes `bad`, one its grammar refuses (as if
    the mask had let it through)."""

    bad = 94  # "{" in the demo vocabulary: no digit

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.seen = 0

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.inner, name)

    def _swap(self, token):  # noqa: ANN001, ANN202
        self.seen += 1
        return (self.bad, None) if self.seen == 3 else token

    def run(self, scheduled):  # noqa: ANN001, ANN201
        results = self.inner.run(scheduled)
        return [self._swap(r) if r is not None and seq.state.seq_id == 1 else r for seq, r in zip(scheduled, results)]

    def collect(self, launched):  # noqa: ANN001, ANN201
        out = self.inner.collect(launched)
        try:
            row = launched.row_of(1)
        except ValueError:
            return out
        out.token_ids[row], out.logprobs[row] = self._swap((out.token_ids[row], out.logprobs[row]))
        return out


def test_a_token_the_grammar_refuses_fails_its_sequence_alone_with_two_plans_in_flight(folder: Path) -> None:
    requests = {1: (PROMPT, _params(Guided("regex", "[0-9]{8}"))),
                2: (PROMPT[1:], _params(Guided("regex", "[0-9]{8}"), temperature=1.0, seed=2)),
                3: (PROMPT, _params(None, max_tokens=10, temperature=1.0, seed=1, ignore_eos=True))}
    sequential, _ = _in_flight(folder, False, requests, executor=RefusedToken)
    overlapped, engine = _in_flight(folder, True, requests, executor=RefusedToken)
    assert overlapped.errors == sequential.errors == {1: f"seq 1: token {RefusedToken.bad} breaks its guided grammar"}
    # The step queued ahead still held seq 1: as on the sequential path, it is an unknown sequence there.
    assert overlapped.steps == sequential.steps
    assert [(step, errors) for step, _, errors in sequential.steps if errors] == [
        (3, [(1, f"seq 1: token {RefusedToken.bad} breaks its guided grammar")]),
        (4, [(1, "seq 1: unknown sequence (never sent as NewSeq, finished or failed)")])]
    assert len(overlapped.outputs[1]) == 2 and len(overlapped.outputs[3]) == 10
    assert re.fullmatch("[0-9]{8}", decode(folder, overlapped.outputs[2]))
    assert engine.runner.num_overlapped_steps >= 8
