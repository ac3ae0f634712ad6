"""Tiny random Hugging Face checkpoints, transformers' greedy reference, and a minimal plan driver."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from services.common.sampling import SamplingParams
from services.common.step import CachedSeqs, NewSeq, StepPlan, StepResult
from services.worker.build import build_engine
from services.worker.config import WorkerConfig
from services.worker.engine import WorkerEngine

_COMMON = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=256, max_position_embeddings=512, initializer_range=0.2, rms_norm_eps=1e-6,
)

# name → (transformers config class, model class, extra config, save_pretrained kwargs)
CHECKPOINTS: dict[str, tuple[str, str, dict, dict]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, {}),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}, {}),
    "llama3_rope": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}, {}),
    "mistral_mqa_sharded": ("MistralConfig", "MistralForCausalLM", {"num_key_value_heads": 1, "sliding_window": None},
                            {"max_shard_size": "100KB"}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}, {}),
}


def make_checkpoint(name: str, folder: Path, seed: int = 0, **overrides) -> Path:  # noqa: ANN003 - config fields
    """Saves a small random fp32 checkpoint of the named kind (config fields replaced by `overrides`) into folder;
    returns folder."""
    import transformers

    config_cls, model_cls, extra, save_kwargs = CHECKPOINTS[name]
    config = getattr(transformers, config_cls)(**{**_COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).to(torch.float32).eval()
    with torch.no_grad():
        # transformers initialises norms to 1 and biases to 0; random values make those code paths count.
        for param_name, param in model.named_parameters():
            if param_name.endswith("norm.weight"):
                param.normal_(1.0, 0.2)
            elif param_name.endswith(".bias"):
                param.normal_(0.0, 0.2)
    model.save_pretrained(folder, **save_kwargs)
    return folder


def hf_greedy(folder: Path, prompt: list[int], num_tokens: int) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy continuation (full recompute each step) and its prefill last-position logits."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    out: list[int] = []
    with torch.no_grad():
        prefill_logits = model(ids).logits[0, -1]
        for _ in range(num_tokens):
            next_id = int(model(ids).logits[0, -1].argmax())
            out.append(next_id)
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    return out, prefill_logits


def cpu_engine(folder: Path, num_kv_blocks: int = 128, **overrides) -> WorkerEngine:
    return build_engine(WorkerConfig(model=str(folder), device="cpu", dtype="float32", num_kv_blocks=num_kv_blocks,
                                     max_model_len=256, **overrides))


@dataclass
class Driver:
    """Plays the scheduler: hands out blocks, sends NewSeq once, then a row of CachedSeqs; never sends tokens back."""

    engine: WorkerEngine
    next_block: int = 0
    step_id: int = 0
    blocks: dict[int, list[int]] = field(default_factory=dict)
    lengths: dict[int, int] = field(default_factory=dict)  # tokens known to the scheduler (prompt + sampled)
    computed: dict[int, int] = field(default_factory=dict)

    def _grow(self, seq_id: int, num_tokens: int) -> list[int]:
        size = self.engine.info.block_size
        owned = self.blocks.setdefault(seq_id, [])
        new = []
        while len(owned) * size < num_tokens:
            owned.append(self.next_block)
            new.append(self.next_block)
            self.next_block += 1
        return new

    def new_seq(self, seq_id: int, prompt: list[int], num_scheduled: int, max_tokens: int = 32,
                shared_blocks: list[int] | None = None, num_computed: int = 0) -> NewSeq:
        self.blocks[seq_id] = list(shared_blocks or [])
        self._grow(seq_id, num_computed + num_scheduled)
        self.lengths[seq_id] = len(prompt)
        self.computed[seq_id] = num_computed + num_scheduled
        return NewSeq(seq_id, list(prompt), len(prompt), SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                      list(self.blocks[seq_id]), num_computed, num_scheduled)

    def cached_seq(self, seq_id: int, num_scheduled: int) -> tuple[int, list[int], int]:
        """A CachedSeqs row: (seq_id, new_block_ids, num_scheduled_tokens)."""
        new = self._grow(seq_id, self.computed[seq_id] + num_scheduled)
        self.computed[seq_id] += num_scheduled
        return seq_id, new, num_scheduled

    def plan(self, new_seqs=(), cached_seqs=(), finished=()) -> StepPlan:  # noqa: ANN001
        """cached_seqs: CachedSeqs rows (see `cached_seq`)."""
        self.step_id += 1
        return StepPlan(self.step_id, list(new_seqs), CachedSeqs.of(cached_seqs), list(finished))

    def step(self, plan: StepPlan) -> StepResult:
        return self.engine.runner.step(plan)


def run_greedy(driver: Driver, prompts: dict[int, list[int]], num_tokens: int, chunk: int | None = None) -> dict[int, list[int]]:
    """Prefills every prompt (in chunks of `chunk` tokens, all in the same steps) and decodes num_tokens tokens,
    keeping every sequence in one batch; returns the sampled tokens per sequence."""
    out: dict[int, list[int]] = {seq_id: [] for seq_id in prompts}
    pending = {seq_id: len(p) for seq_id, p in prompts.items()}
    first = True
    while any(len(v) < num_tokens for v in out.values()):
        new, cached = [], []
        for seq_id, prompt in prompts.items():
            left = pending[seq_id]
            n = min(left, chunk) if (chunk and left > 0) else (left if left > 0 else 1)
            if len(out[seq_id]) >= num_tokens:
                continue
            if first:
                new.append(driver.new_seq(seq_id, prompt, n))
            else:
                cached.append(driver.cached_seq(seq_id, n))
            pending[seq_id] = max(0, left - n)
        first = False
        result = driver.step(driver.plan(new, cached))
        assert not result.errors, result.errors
        for seq_id, token_id, _ in result.sampled.rows():
            out[seq_id].append(token_id)
    return out


def build_gpu_path_reference_engine(config: WorkerConfig, monkeypatch) -> WorkerEngine:  # noqa: ANN001
    """An engine of the reference ops on CUDA whose FP8 projections round activations to FP8 per token wherever
    the kernels' tensor-core path does, so kernels and reference compute the same thing."""
    from kernels.fp8_linear import fp8_linear_ref, fp8_linear_silu_and_mul_ref
    from services.worker import model_engine
    from services.worker.ops import REFERENCE_OPS

    capability = torch.cuda.get_device_capability()
    ops = replace(REFERENCE_OPS, fp8_linear=partial(fp8_linear_ref, capability=capability),
                  fp8_linear_silu_and_mul=partial(fp8_linear_silu_and_mul_ref, capability=capability))
    with monkeypatch.context() as patch:
        patch.setattr(model_engine, "select_ops", lambda device, use_kernels=None: ops)
        return build_engine(config)
