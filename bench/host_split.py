"""Where a Runner step's host time goes: each piece of the overlapped decode step wrapped in a timer that keeps its
own time (its wall time less that of the wrapped pieces it calls), summed over the steps run inside the block.

On CUDA the forward pass and the sampling are their launches' host time (a graph replay, a few kernels), and
"wait for tokens" is the host waiting for the device; on the CPU those three are the device's work itself, done
by the host, and the rest is what a GPU's host would do. A guided step's critical path is its collect (wait for
tokens, advance the matchers) then its held-back sampling (sampling batch with the mask fill, sampling launch).

    with HostSplit() as split:
        times = bench.decode(ids, num_steps, overlap=True)
    split.ms_per_step(len(times))  # {"mask fill": 0.18, ...}
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable
from typing import Any

# (piece, module, attribute path): the functions timed, each charged to its piece.
PIECES: tuple[tuple[str, str, str], ...] = (
    ("step (rest)", "services.worker.runner", "Runner.step"),
    ("apply plan", "services.worker.runner", "Runner._apply"),
    ("advance with placeholders", "services.worker.sequences", "SequenceTable.advance_launched"),
    ("step inputs", "services.worker.step_inputs", "StepInputs.of"),
    ("launch (rest)", "services.worker.model_runner", "ModelRunner._launch"),
    ("forward", "services.worker.model_runner", "ModelRunner._forward"),
    ("wait for tokens", "services.worker.device_tokens", "DeviceTokens.outputs"),
    ("collect (rest)", "services.worker.runner", "Runner._collect"),
    ("resolve (rest)", "services.worker.runner", "Runner._resolve"),
    ("tokens in place, matchers advanced", "services.worker.sequences", "SequenceTable.resolve_launched"),
    ("sampling batch", "services.worker.sampling.batch", "SamplingBatch.build"),
    ("mask fill", "services.worker.sampling.batch", "fill_bitmask"),
    ("sampling", "services.worker.sampler", "Sampler.sample_prepared"),
    ("copy to host queued", "services.worker.device_tokens", "DeviceTokens._attach"),
)


class HostSplit:
    """Times PIECES while entered; `ms_per_step` reads the totals."""

    def __init__(self) -> None:
        self.total_s: dict[str, float] = {}
        self._stack: list[float] = []  # per wrapped call in progress: the time of the wrapped calls inside it
        self._restore: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> HostSplit:
        for piece, module, path in PIECES:
            *outer, name = path.split(".")
            owner = functools.reduce(getattr, outer, importlib.import_module(module))
            raw = vars(owner)[name] if isinstance(owner, type) else getattr(owner, name)
            self._restore.append((owner, name, raw))
            setattr(owner, name, self._wrapped(piece, raw))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, raw in reversed(self._restore):
            setattr(owner, name, raw)
        self._restore.clear()

    def ms_per_step(self, num_steps: int) -> dict[str, float]:
        """Each piece's own time per step in ms, largest first."""
        ranked = sorted(self.total_s.items(), key=lambda kv: -kv[1])
        return {piece: round(s / num_steps * 1e3, 3) for piece, s in ranked}

    def _wrapped(self, piece: str, raw: Any) -> Any:
        kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) else None
        fn: Callable[..., Any] = raw.__func__ if kind is not None else raw
        stack, total = self._stack, self.total_s

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = stack.pop()
                total[piece] = total.get(piece, 0.0) + elapsed - inner
                if stack:
                    stack[-1] += elapsed

        return kind(timed) if kind is not None else timed
