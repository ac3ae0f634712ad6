"""Memos of what an attention launch derives from facts that stay the same from call to call.

Every attention layer of a step launches the same kernels on tensors of the same shapes, dtypes and strides; only its
own K/V cache differs, and the caches live as long as the worker. Re-deriving the device's capability, the shared
memory layouts, the configs, the kernel path and the caches' TMA descriptors on every call is host time that every
layer of a host-bound step repeats for nothing. Each memo is keyed on every fact its value is computed from, so that
a different input never gets a stale value:

* DeviceFacts: a device property (compute capability, SM count) by device index; it never changes in a process.
* SignatureMemo: a decision by a tuple its caller builds from everything the deciding function reads.
* TensorMemo: an object built from a tensor's memory (a TMA descriptor) by the tensor's data pointer, shape,
  strides, dtype and device plus the object's own parameters. An entry holds a view of the memory and lasts as long
  as the tensor object it was built for: no other tensor can be given that address while the entry exists, and the
  memo never keeps memory alive after its caller let go of it.

Shapes-and-dtypes-only values (configs, NVMMA layouts) are functools caches where they are defined, registered here
so that clear_launch_memos resets them too (bench/attention_launch.py times calls with and without the memos).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import torch

T = TypeVar("T")

_CLEARERS: list[Callable[[], None]] = []  # one per memo, filled at import


def register_memo(clear: Callable[[], None]) -> None:
    """Adds a memo's clear function to those clear_launch_memos calls."""
    _CLEARERS.append(clear)


def clear_launch_memos() -> None:
    """Empties every launch memo: the next calls derive everything again (as each call did before the memos)."""
    for clear in _CLEARERS:
        clear()


class DeviceFacts(Generic[T]):
    """probe(device_index) once per CUDA device index."""

    def __init__(self, probe: Callable[[int], T]) -> None:
        self._probe = probe
        self._values: dict[int, T] = {}
        register_memo(self._values.clear)

    def __call__(self, device: torch.device) -> T:
        # A tensor's device always has its index; a bare torch.device("cuda") means the current one.
        index = device.index if device.index is not None else torch.cuda.current_device()
        value = self._values.get(index)
        if value is None:
            value = self._values[index] = self._probe(index)
        return value


device_capability: DeviceFacts[tuple[int, int]] = DeviceFacts(torch.cuda.get_device_capability)
sm_count: DeviceFacts[int] = DeviceFacts(lambda index: torch.cuda.get_device_properties(index).multi_processor_count)


class SignatureMemo(Generic[T]):
    """compute() once per key. The key must hold every fact compute reads; distinct keys are few in serving (one per
    batch shape class), so past max_entries the memo starts over rather than grow without bound."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._values: dict[Hashable, T] = {}
        self._max_entries = max_entries
        register_memo(self._values.clear)

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        try:
            return self._values[key]
        except KeyError:
            pass
        value = compute()
        if len(self._values) >= self._max_entries:
            self._values.clear()
        self._values[key] = value
        return value

    def __len__(self) -> int:
        return len(self._values)


class TensorMemo(Generic[T]):
    """build(view of tensor) once per (data pointer, shape, strides, dtype, device, params) of a live tensor."""

    def __init__(self) -> None:
        self._values: dict[tuple, T] = {}
        register_memo(self._values.clear)

    @staticmethod
    def key(tensor: torch.Tensor, params: Hashable) -> tuple:
        return (tensor.data_ptr(), tensor.shape, tensor.stride(), tensor.dtype, tensor.device, params)

    def get(self, tensor: torch.Tensor, params: Hashable, build: Callable[[torch.Tensor], T]) -> T:
        """params: everything besides the tensor that build reads (box shape, ...)."""
        key = self.key(tensor, params)
        value = self._values.get(key)
        if value is not None:
            return value
        # The value is built on a view of its own, so the caller's tensor object can die; the entry goes with it.
        value = build(tensor.detach())
        self._values[key] = value
        weakref.finalize(tensor, self._drop, key, value)
        return value

    def _drop(self, key: tuple, value: T) -> None:
        # Only this entry: the key may have been rebuilt since for another live view of the same memory.
        if self._values.get(key) is value:
            self._values.pop(key, None)

    def __len__(self) -> int:
        return len(self._values)
