"""Configuration of the scheduler stage, built once in main() (or by tests) and passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import (BackoffConfig, ServerConfig, check_host_port, csv_option, option,
                                    service_option)
from services.common.errors import InvalidArgument

POLICIES = ("continuous", "static")
MAX_STEPS_IN_FLIGHT = 4


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching limits and policy; the per-worker limits are the smaller of these and the worker's own."""

    max_num_seqs: int = option(1024, "most sequences running at once (the worker's own limit also applies)")
    max_num_batched_tokens: int = option(8192, "token budget of one step; a longer prompt is prefilled in chunks")
    max_queued_requests: int = option(
        4096, "waiting requests beyond which new ones get RESOURCE_EXHAUSTED (HTTP 429)")
    policy: str = option("continuous", "continuous batching, or static batches run to completion (the baseline)",
                         choices=POLICIES)
    enable_prefix_caching: bool = option(True, "reuse the KV blocks of prompt prefixes seen before")
    # Each admission puts a prompt into a step of decode rows, and such a mixed step costs the worker's host far
    # more than a decode step (its attention runs outside the decode graph, layer by layer): admitting one sequence
    # per freed seat makes a third of a full batch's steps mixed. Gathering a few seats' worth first costs the held
    # sequences a few steps of waiting, bounded by admit_wait_ms.
    admit_batch: int = option(
        8, "when the running batch is full, waiting sequences are admitted once this many seats are free (or all of "
           "them fit), unless the step runs prompt chunks anyway; 1 admits at every free seat")
    admit_wait_ms: float = option(
        50.0, "how long free seats may stay free while admit_batch gathers, from the first step that held them")
    # With 2 the worker sees the next plan while a step runs; with 3 that plan was built a step earlier, so the
    # scheduler's round trip leaves the worker's critical path, which short steps (small batches, small models)
    # cannot hide.
    max_steps_in_flight: int = option(
        3, "plans sent to a worker before its oldest is answered (1 to 4); more hide the round trip through the "
           "scheduler, at the cost of tokens computed after a sequence stopped")

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_queued_requests"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"{name} must be positive, got {getattr(self, name)}")
        if self.policy not in POLICIES:
            raise InvalidArgument(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.admit_batch < 1 or self.admit_wait_ms < 0:
            raise InvalidArgument(
                f"admit_batch must be >= 1 and admit_wait_ms >= 0, got {self.admit_batch} and {self.admit_wait_ms}")
        if not 1 <= self.max_steps_in_flight <= MAX_STEPS_IN_FLIGHT:
            raise InvalidArgument(
                f"max_steps_in_flight must be 1 to {MAX_STEPS_IN_FLIGHT}, got {self.max_steps_in_flight}")


@dataclass(frozen=True)
class WorkerLimits:
    """What one worker reported in Worker.Info that the scheduler needs."""

    block_size: int
    num_kv_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    eos_token_ids: tuple[int, ...] = ()
    worker_id: str = ""
    model_id: str = ""
    model_revision: str = ""
    vocab_size: int = 0

    def __post_init__(self) -> None:
        for name in ("block_size", "num_kv_blocks", "max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"worker {self.worker_id!r} reported {name}={getattr(self, name)}")


@dataclass(frozen=True)
class StallConfig:
    """When a worker with steps in flight that returns nothing is declared stalled (see progress_watch)."""

    timeout_s: float = option(
        3.0, "a worker with steps in flight that returns nothing this long (plus time for large prefills) is "
             "stalled: its requests move or fail, it gets no work until it answers", name="stall_timeout_s")
    per_prefill_token_s: float = 0.001  # more time per prompt token in the step (a large prefill is slow)
    first_steps: int = 8  # the first steps of a connection may compile kernels:
    first_steps_timeout_s: float = 60.0  # they get this long

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.first_steps_timeout_s <= 0 or self.per_prefill_token_s < 0:
            raise InvalidArgument(f"stall timeouts must be positive, got {self}")


@dataclass(frozen=True)
class SchedulerStageConfig:
    """Everything main() builds for the scheduler stage."""

    server: ServerConfig
    workers: tuple[str, ...] = csv_option(
        "127.0.0.1:50053", "worker addresses, host:port[,host:port...] (may be empty with --worker-service)")
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    stall: StallConfig = field(default_factory=StallConfig)
    worker_service: str = service_option("workers")
    discovery_interval_s: float = option(5.0, "how often --worker-service is resolved")
    worker_drain_timeout_s: float = option(
        30.0, "how long a worker that left the pool keeps its running requests before they fail")

    def __post_init__(self) -> None:
        if not self.workers and not self.worker_service:
            raise InvalidArgument("at least one worker address is needed (--workers host:port[,host:port...] "
                                  "or --worker-service host:port)")
        if self.worker_service:
            check_host_port(self.worker_service, "worker service")
        for name in ("discovery_interval_s", "worker_drain_timeout_s"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"{name} must be positive, got {getattr(self, name)}")
