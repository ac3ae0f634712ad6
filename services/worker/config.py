"""The worker stage's configuration, built once in main() from flags and FLASHSTREAM_* variables."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import ServerConfig
from services.common.errors import InvalidArgument
from services.worker.quantization import QUANTIZATIONS

LOAD_FORMATS = ("auto", "dummy", "fake")
DTYPES = ("auto", "float32", "float16", "bfloat16")
KV_CACHE_DTYPES = ("auto", "fp8")  # auto: the model's dtype; fp8: float8_e4m3fn, half the bytes of bf16


@dataclass(frozen=True)
class WorkerConfig:
    model: str  # a Hugging Face checkpoint folder, or a preset name for dummy/fake
    model_id: str = ""  # name clients use; defaults to the folder's or preset's name
    load_format: str = "auto"  # auto: safetensors; dummy: random weights; fake: no model at all
    dtype: str = "auto"  # auto: bfloat16 on CUDA (fp16 checkpoints keep fp16), float32 on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    # "fp8": projections quantised to FP8 at load (per output channel); "": as the checkpoint stores them
    # (FP8 checkpoints load as FP8 either way).
    quantization: str = ""
    kv_cache_dtype: str = "auto"  # fp8: keys and values stored as float8_e4m3fn with per-layer scales
    block_size: int = 16
    num_kv_blocks: int = 0  # 0: measured on CUDA, CPU_DEFAULT_KV_BLOCKS elsewhere
    gpu_memory_utilization: float = 0.90
    max_num_seqs: int = 1024  # most sequences in one step (decode graphs are captured up to it)
    max_num_batched_tokens: int = 8192  # most tokens in one step
    max_model_len: int = 0  # 0: the model's max_position_embeddings
    enforce_eager: bool = False  # no CUDA graphs
    fake_token_id: int = -1  # fake mode's token; -1: the smallest id that is not EOS
    seed: int = 0  # dummy weights' seed
    worker_id: str = ""
    kernel_profile_dir: str = ""  # where SIGUSR1 writes a torch.profiler summary of a window of steps ("": off)
    kernel_profile_steps: int = 100  # steps in that window
    tensor_parallel_size: int = 1  # processes (one per device) that together hold the model
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        if not self.model:
            raise InvalidArgument("--model is required (a checkpoint folder or a preset name)")
        if self.load_format not in LOAD_FORMATS:
            raise InvalidArgument(f"load_format must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        if self.quantization not in QUANTIZATIONS:
            raise InvalidArgument(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise InvalidArgument(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        if self.dtype not in DTYPES:
            raise InvalidArgument(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise InvalidArgument(f"block_size must be a power of two, got {self.block_size}")
        for name in ("num_kv_blocks", "max_model_len"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must be non-negative, got {getattr(self, name)}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "kernel_profile_steps", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.tensor_parallel_size > 1 and self.load_format == "fake":
            raise InvalidArgument("tensor_parallel_size > 1 needs a model; fake mode has none")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise InvalidArgument(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


CPU_DEFAULT_KV_BLOCKS = 1024
FAKE_DEFAULT_KV_BLOCKS = 65536
