"""Guided decoding through the worker's Runner on the demo checkpoint (random weights, real tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from services.common.sampling import SamplingParams
from services.common.step import CachedSeqs, NewSeq, StepPlan
from services.worker.engine import WorkerEngine

EOS_ID = 1  # the demo model's </s>


@dataclass
class GuidedRun:
    """Plays the scheduler for a batch of sequences run to the end: EOS or max_tokens."""

    engine: WorkerEngine
    block_size: int = 16
    next_block: int = 0
    step_id: int = 0
    outputs: dict[int, list[int]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)

    def _blocks(self, num_tokens: int) -> list[int]:
        n = -(-num_tokens // self.block_size)
        blocks = list(range(self.next_block, self.next_block + n))
        self.next_block += n
        return blocks

    def run(self, requests: dict[int, tuple[list[int], SamplingParams]]) -> dict[int, list[int]]:
        """Token ids generated per sequence (EOS included when it ended there)."""
        new = [
            NewSeq(seq_id, prompt, len(prompt), params, self._blocks(len(prompt) + params.max_tokens), 0, len(prompt))
            for seq_id, (prompt, params) in requests.items()
        ]
        live = {seq_id: params.max_tokens for seq_id, (_, params) in requests.items()}
        for seq_id in requests:
            self.outputs[seq_id] = []
        finished: list[int] = []
        cached: list[tuple[int, list[int], int]] = []
        while new or cached:
            self.step_id += 1
            result = self.engine.runner.step(StepPlan(self.step_id, new, CachedSeqs.of(cached), finished))
            new, finished = [], []
            for err in result.errors:
                self.errors[err.seq_id] = err.error.message
                live.pop(err.seq_id, None)
            for seq_id, token_id, _ in result.sampled.rows():
                self.outputs[seq_id].append(token_id)
                if token_id == EOS_ID or len(self.outputs[seq_id]) >= live[seq_id]:
                    live.pop(seq_id)
                    finished.append(seq_id)
            cached = [(seq_id, [], 1) for seq_id in live]
        return self.outputs


@dataclass
class InFlightRun(GuidedRun):
    """Plays a scheduler that keeps two plans in flight: plan k+1 is built before result k is seen, so a sequence
    that ends at step k runs once more (that token is dropped) and is listed finished in plan k+2. With `overlap`
    the runner is handed each next plan (and may queue its step ahead); without, it runs the same plans one by one.

    `preempt` {seq_id: step}: that step's plan takes the sequence away (listed finished, its state dropped) and the
    plan two steps later sends it again whole, its generated tokens included, with its first KV block computed (a
    prefix-cache hit)."""

    overlap: bool = True
    block_hit: int = 16  # tokens of a resent sequence whose KV counts as computed
    steps: list[tuple] = field(default_factory=list)  # per step: its id, (seq, token) outputs, (seq, error) errors

    def run(self, requests: dict[int, tuple[list[int], SamplingParams]],
            preempt: dict[int, int] | None = None) -> dict[int, list[int]]:
        preempt = dict(preempt or {})
        blocks = {seq_id: self._blocks(len(prompt) + params.max_tokens) for seq_id, (prompt, params) in requests.items()}
        live = {seq_id: params.max_tokens for seq_id, (_, params) in requests.items()}
        for seq_id in requests:
            self.outputs[seq_id] = []
        away: dict[int, int] = {}  # preempted seq_id -> step of the plan that sends it again
        finished: list[int] = []  # seen to end, not yet listed in a plan
        self.step_id += 1
        plan: StepPlan | None = StepPlan(self.step_id, [
            NewSeq(seq_id, prompt, len(prompt), params, blocks[seq_id], 0, len(prompt))
            for seq_id, (prompt, params) in requests.items()], CachedSeqs(), [])
        while plan is not None:
            nxt = None
            if live:
                step = self.step_id + 1
                new, gone = [], list(finished)
                finished.clear()
                for seq_id in [s for s, at in preempt.items() if at == step and s in live]:
                    del preempt[seq_id]
                    gone.append(seq_id)
                    away[seq_id] = step + 2
                for seq_id in [s for s, at in away.items() if at == step]:
                    del away[seq_id]
                    if seq_id not in live:  # its last token before it was taken away ended it
                        continue
                    prompt, params = requests[seq_id]
                    tokens = prompt + self.outputs[seq_id]
                    new.append(NewSeq(seq_id, tokens, len(prompt), params, blocks[seq_id], self.block_hit,
                                      len(tokens) - self.block_hit))
                held = {n.seq_id for n in new} | set(away) | set(gone)
                cached = [(seq_id, [], 1) for seq_id in live if seq_id not in held]
                self.step_id = step
                nxt = StepPlan(step, new, CachedSeqs.of(cached), gone)
            result = self.engine.runner.step(plan, next_plan=nxt if self.overlap else None)
            self.steps.append((result.step_id, list(zip(result.sampled.seq_ids, result.sampled.token_ids)),
                               [(e.seq_id, e.error.message) for e in result.errors]))
            for err in result.errors:
                if err.seq_id in live:
                    self.errors[err.seq_id] = err.error.message
                    live.pop(err.seq_id)
            for seq_id, token_id, _ in result.sampled.rows():
                if seq_id not in live:
                    continue  # it ended at the step before: the scheduler drops this token
                self.outputs[seq_id].append(token_id)
                if token_id == EOS_ID or len(self.outputs[seq_id]) >= live[seq_id]:
                    live.pop(seq_id)
                    finished.append(seq_id)
            plan = nxt
        return self.outputs


def decode(folder: Path, token_ids: list[int]) -> str:
    return Tokenizer.from_file(str(folder / "tokenizer.json")).decode([t for t in token_ids if t != EOS_ID])
