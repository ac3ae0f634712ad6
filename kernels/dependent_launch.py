"""Programmatic dependent launch on Hopper: a kernel launched as a dependent of the one before it in the stream is
scheduled while that one still runs its last wave, and waits (gdc_wait) before it touches memory, so its launch
latency hides behind its predecessor instead of following it. A decode step of a small batch runs hundreds of short
kernels back to back, each mostly waiting on memory, where those gaps add up.

Kernels that take part begin with `dependent_start(USE_GDC)`: when set, `gdc_wait()` before their first load, then
`gdc_launch_dependents()`, which lets the next dependent launch be scheduled once every program of this one has
started; launchers pass `launch_pdl=True` (`launch_options`). A dependent launch after an ordinary kernel simply
starts once that kernel ends.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.launch_memo import device_capability

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # a Triton without grid dependency control: every kernel is launched the ordinary way
    gdc_launch_dependents = gdc_wait = None

# Whether the projection, norm, activation and rotary kernels launch as dependents where the device allows it.
ENABLED = True


def supports_pdl(requested: bool, device: torch.device) -> bool:
    """Programmatic dependent launch needs a compiled launch on compute capability 9.0 or newer."""
    return (requested and gdc_wait is not None and device.type == "cuda"
            and device_capability(device)[0] >= 9)


def dependent_launch(device: torch.device) -> bool:
    """Whether the small kernels launch as dependents on `device` (ENABLED and supported)."""
    return supports_pdl(ENABLED, device)


def launch_options(dependent: bool) -> dict[str, bool]:
    """The launch keyword of a dependent launch (none for an ordinary one)."""
    return {"launch_pdl": True} if dependent else {}


@triton.jit
def dependent_start(USE_GDC: tl.constexpr):
    """The first step of a kernel that may be launched as a dependent (nothing when USE_GDC is off): waits until the
    kernels before it have finished and their writes are visible, then lets the next dependent launch be scheduled."""
    if USE_GDC:
        gdc_wait()
        gdc_launch_dependents()
