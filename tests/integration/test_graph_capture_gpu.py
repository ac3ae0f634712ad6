"""On a CUDA GPU: a graph captured by capture_graph replays its work, with the garbage collector off only while it
captures, and a capture that fails is warmed up and captured again."""

from __future__ import annotations

import gc

import pytest
import torch

from services.worker.graph_capture import capture_graph

pytestmark = pytest.mark.gpu


def test_a_captured_graph_replays_on_new_inputs_and_the_collector_is_back_on() -> None:
    x = torch.arange(4, dtype=torch.float32, device="cuda")
    y = torch.zeros(4, device="cuda")
    gc_during: list[bool] = []

    def run() -> None:
        gc_during.append(gc.isenabled())
        y.copy_(x * 2 + 1)

    graph = capture_graph(run, torch.cuda.graph_pool_handle(), torch.cuda.Stream(), "test")
    x.copy_(torch.tensor([10.0, 20.0, 30.0, 40.0]))
    graph.replay()
    torch.cuda.synchronize()
    assert y.tolist() == [21.0, 41.0, 61.0, 81.0]
    assert gc_during == [True, False]  # the warm-up with it, the capture without
    assert gc.isenabled()


def test_a_capture_that_fails_once_is_captured_again() -> None:
    x = torch.ones(3, device="cuda")
    y = torch.zeros(3, device="cuda")
    calls = []

    def run() -> None:
        calls.append(torch.cuda.is_current_stream_capturing())
        if len(calls) == 2:  # the first capture
            raise RuntimeError("operation not permitted when stream is capturing")
        y.copy_(x + 4)

    graph = capture_graph(run, torch.cuda.graph_pool_handle(), torch.cuda.Stream(), "test")
    x.fill_(2.0)
    graph.replay()
    torch.cuda.synchronize()
    assert y.tolist() == [6.0, 6.0, 6.0]
    assert calls == [False, True, False, True]  # warm-up, failed capture, warm-up, capture
    assert gc.isenabled()
