"""Root pytest configuration.

Triton reads TRITON_INTERPRET when it is first imported, so the choice between compiled kernels (a CUDA
GPU is present) and the CPU interpreter is made here, before any test module imports triton or torch.
"""

import os
import shutil


def _has_cuda_device() -> bool:
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


if not _has_cuda_device():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
