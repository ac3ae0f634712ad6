"""The worker stage's configuration, built once in main() from flags and FLASHSTREAM_* variables."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import ServerConfig, option
from services.common.errors import InvalidArgument
from services.worker.presets import PRESETS
from services.worker.quantization import FP8, QUANTIZATIONS

LOAD_FORMATS = ("auto", "dummy", "fake")
DTYPES = ("auto", "float32", "float16", "bfloat16")
KV_CACHE_DTYPES = ("auto", "fp8")  # auto: the model's dtype; fp8: float8_e4m3fn, half the bytes of bf16
CPU_DEFAULT_KV_BLOCKS = 1024
FAKE_DEFAULT_KV_BLOCKS = 65536


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the worker stage needs: its model, its KV cache and step limits, and its server."""

    model: str = option("", f"Hugging Face checkpoint folder, or a preset ({', '.join(PRESETS)}) for dummy/fake")
    model_id: str = option("", "model name clients use (default: folder name)")
    load_format: str = option(
        "auto", "auto: safetensors weights; dummy: random weights of the real shapes; fake: no model, fixed token",
        choices=LOAD_FORMATS)
    dtype: str = option("auto", "auto: bfloat16 (or the checkpoint's float16) on CUDA, float32 on CPU", choices=DTYPES)
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    quantization: str = option(
        "", "fp8: quantise the linear layers to FP8 at load, one scale per output channel (FP8 checkpoints load as "
            "FP8 without it)", choices=QUANTIZATIONS)
    quantize_lm_head: bool = option(
        False, "with --quantization fp8: the output projection (lm_head, or an FP8 copy of tied embeddings) in FP8 "
               "too, one scale per vocabulary row (default: it keeps the model dtype)")
    kv_cache_dtype: str = option(
        "auto", "auto: the model's dtype; fp8: float8_e4m3fn keys and values with per-layer scales (1, or the "
                "checkpoint's k_scale/v_scale), twice the tokens in the same memory", choices=KV_CACHE_DTYPES)
    block_size: int = option(16, "tokens per KV block")
    num_kv_blocks: int = option(0, f"KV blocks to allocate (0: measured on CUDA, {CPU_DEFAULT_KV_BLOCKS} on CPU, "
                                   f"{FAKE_DEFAULT_KV_BLOCKS} in fake mode)")
    gpu_memory_utilization: float = option(0.90, "fraction of GPU memory for weights, activations and the KV cache")
    # Decode graphs are captured up to max_num_seqs.
    max_num_seqs: int = option(1024, "most sequences per step")
    max_num_batched_tokens: int = option(8192, "most tokens per step (also the memory profile's size)")
    max_model_len: int = option(0, "longest prompt plus output (0: the model's max_position_embeddings)")
    enforce_eager: bool = option(False, "no CUDA graphs for decode steps")
    piecewise_max_tokens: int = option(
        2048, "CUDA graphs of prompt-holding steps (everything but attention) up to this many tokens; longer steps "
              "run eagerly (0: none). Raising it to --max-num-batched-tokens spares the host most launches of a "
              "small model's prompt steps for a few percent more device time")
    fake_token_id: int = option(-1, "token fake mode returns (-1: the smallest non-EOS id)")
    fake_step_ms: float = option(
        0.0, "fake mode: milliseconds each step takes on a simulated device, queued steps back to back as on a GPU "
             "(0: none, every step runs at once); what the stages add to a device of known speed")
    seed: int = option(0, "seed of dummy weights")
    worker_id: str = option(
        "", "name in Worker.Info, one per process: a scheduler that saw it past its first steps gives them no "
            "kernel-compile time again (default: host-pid)")
    kernel_profile_dir: str = option(
        "", "on POST /kernel-profile to the status port, trace the next --kernel-profile-steps steps with "
            "torch.profiler and write a summary of the device kernels here (default: off)")
    kernel_profile_steps: int = option(100, "steps in a kernel profile window")
    tensor_parallel_size: int = option(
        1, "processes that together hold the model, one per GPU (cuda:0 .. cuda:N-1; NCCL), or on the CPU (gloo); "
           "this process is rank 0 and serves gRPC, it starts the others")
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        if not self.model:
            raise InvalidArgument("--model is required (a checkpoint folder or a preset name)")
        if self.load_format not in LOAD_FORMATS:
            raise InvalidArgument(f"load_format must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        if self.quantization not in QUANTIZATIONS:
            raise InvalidArgument(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        if self.quantize_lm_head and self.quantization != FP8:
            raise InvalidArgument("--quantize-lm-head needs --quantization fp8 (it quantises the output projection "
                                  "beside the decoder's projections)")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise InvalidArgument(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        if self.dtype not in DTYPES:
            raise InvalidArgument(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise InvalidArgument(f"block_size must be a power of two, got {self.block_size}")
        for name in ("num_kv_blocks", "max_model_len", "piecewise_max_tokens"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must be non-negative, got {getattr(self, name)}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "kernel_profile_steps", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.fake_step_ms < 0:
            raise InvalidArgument(f"fake_step_ms must be non-negative, got {self.fake_step_ms}")
        if self.tensor_parallel_size > 1 and self.load_format == "fake":
            raise InvalidArgument("tensor_parallel_size > 1 needs a model; fake mode has none")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise InvalidArgument(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")

