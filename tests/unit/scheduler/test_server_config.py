"""Flags and FLASHSTREAM_* defaults of `flashstream serve scheduler`."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.scheduler.server import build_config


def test_flags_build_the_stage_config():
    config = build_config([
        "--port", "0", "--workers", "a:1,b:2", "--max-num-seqs", "8", "--max-num-batched-tokens", "128",
        "--max-queued-requests", "5", "--policy", "static", "--no-enable-prefix-caching",
    ])
    assert config.workers == ("a:1", "b:2")
    s = config.scheduler
    assert (s.max_num_seqs, s.max_num_batched_tokens, s.max_queued_requests) == (8, 128, 5)
    assert (s.policy, s.enable_prefix_caching) == ("static", False)
    assert config.server.port == 0


def test_environment_gives_the_defaults(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLASHSTREAM_WORKERS", "w:9")
    monkeypatch.setenv("FLASHSTREAM_MAX_NUM_SEQS", "3")
    config = build_config([])
    assert config.workers == ("w:9",)
    assert config.scheduler.max_num_seqs == 3
    assert config.scheduler.enable_prefix_caching is True
    assert config.server.port == 50052


def test_invalid_values_are_refused_with_a_message():
    with pytest.raises(InvalidArgument, match="max_num_seqs must be positive"):
        build_config(["--max-num-seqs", "0"])
    with pytest.raises(InvalidArgument, match="at least one worker"):
        build_config(["--workers", ""])


def test_a_worker_service_may_stand_instead_of_a_worker_list():
    config = build_config(["--workers", "", "--worker-service", "worker:50053", "--discovery-interval-s", "2",
                           "--worker-drain-timeout-s", "10"])
    assert (config.workers, config.worker_service, config.discovery_interval_s, config.worker_drain_timeout_s) == (
        (), "worker:50053", 2.0, 10.0)
    with pytest.raises(InvalidArgument, match="at least one worker address is needed"):
        build_config(["--workers", ""])
    with pytest.raises(InvalidArgument, match="worker service must be host:port, got 'worker'"):
        build_config(["--worker-service", "worker"])
    with pytest.raises(InvalidArgument, match="discovery_interval_s must be positive, got 0.0"):
        build_config(["--worker-service", "w:1", "--discovery-interval-s", "0"])
