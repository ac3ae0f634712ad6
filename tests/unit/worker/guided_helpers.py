"""Guided decoding through the worker's Runner on the demo checkpoint (random weights, real tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from services.common.sampling import SamplingParams
from services.worker.engine import Engine
from services.worker.plan import CachedSeq, NewSeq, StepPlan

EOS_ID = 1  # the demo model's </s>


@dataclass
class GuidedRun:
    """Plays the scheduler for a batch of sequences run to the end: EOS or max_tokens."""

    engine: Engine
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
        cached: list[CachedSeq] = []
        while new or cached:
            self.step_id += 1
            result = self.engine.runner.step(StepPlan(self.step_id, new, cached, finished))
            new, finished = [], []
            for err in result.errors:
                self.errors[err.seq_id] = err.error.message
                live.pop(err.seq_id, None)
            for out in result.outputs:
                self.outputs[out.seq_id].append(out.token_id)
                if out.token_id == EOS_ID or len(self.outputs[out.seq_id]) >= live[out.seq_id]:
                    live.pop(out.seq_id)
                    finished.append(out.seq_id)
            cached = [CachedSeq(seq_id, [], 1) for seq_id in live]
        return self.outputs


def decode(folder: Path, token_ids: list[int]) -> str:
    return Tokenizer.from_file(str(folder / "tokenizer.json")).decode([t for t in token_ids if t != EOS_ID])
