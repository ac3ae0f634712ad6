"""The engines of one model's workers (data parallel): admission checks and routing of new requests.

Each connected worker has its own Engine (its own KV blocks and block manager). A new request goes to the
worker with the longest cached prefix of its prompt, then the least load; it stays there until it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING

from services.common.errors import ErrorCode, FlashStreamError, InvalidArgument, ResourceExhausted, Unavailable
from services.scheduler.config import SchedulerConfig, WorkerLimits
from services.scheduler.engine import Engine
from services.scheduler.engine_state import EngineState, EngineTotals, WorkerEngineState
from services.scheduler.request_events import Event, NewTokens, Request
from services.scheduler.sequence import Sequence

if TYPE_CHECKING:
    from services.common.metrics import Metrics


class EnginePool:
    """Engines of the connected workers, by worker name."""

    def __init__(
        self,
        config: SchedulerConfig,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.engines: dict[str, Engine] = {}
        self._owner: dict[Hashable, str] = {}  # live request key -> worker name
        self._retired = EngineTotals()  # counters of engines whose worker left
        self.draining: set[str] = set()  # workers leaving the pool: they finish their requests and take no new one

    # ---- workers ----

    def add_worker(self, name: str, limits: WorkerLimits) -> Engine:
        if name in self.engines:
            raise KeyError(f"worker {name!r} is already connected")
        engine = Engine(self.config, limits, self.metrics, self.clock)
        self.engines[name] = engine
        if self.metrics is not None:
            self.metrics.set_model(limits.model_id)
        return engine

    def remove_worker(self, name: str, message: str) -> list[Event]:
        """Drops a lost worker. Its requests that have sent no token yet are queued again on the other workers
        (recomputed from their prompt, so the client never notices); the rest end with UNAVAILABLE (returned)."""
        engine = self.engines.pop(name, None)
        if engine is None:
            return []
        unsent = [Request(seq.key, tuple(seq.token_ids[:seq.num_prompt_tokens]), seq.params, seq.priority,
                          seq.deadline, seq.traceparent)
                  for seq in engine.sequences.values() if seq.num_emitted_tokens == 0]
        engine.fail_all(ErrorCode.UNAVAILABLE, message)
        self._retired.add(engine.totals)
        events = engine.take_events()
        for event in events:
            if type(event) is not NewTokens:
                self._owner.pop(event.key, None)
        moved = set()
        for request in unsent:
            try:
                self.route(request)
                moved.add(request.key)
            except FlashStreamError:
                pass  # no other worker, or none that fits: the UNAVAILABLE stands
        # Tokens stay: a request that streamed none is the only kind moved.
        return [event for event in events if type(event) is NewTokens or event.key not in moved]

    # ---- requests ----

    def route(self, request: Request) -> str:
        """Queues a request on the best worker; returns that worker's name.

        The request arrives checked (sampling by the gateway, prompt length and ids by the tokenizer stage); what is
        known only here is checked here. Raises InvalidArgument (a prompt that can never fit a worker's KV cache, a
        request id in use), ResourceExhausted (queue full), Unavailable (no worker connected), or an INTERNAL
        error when the request breaks what the tokenizer stage guarantees.
        """
        if request.key in self._owner:
            raise InvalidArgument(f"request id {request.key!r} is already in use")
        prompt = request.prompt_token_ids
        if not prompt or request.params.fill_context:
            raise FlashStreamError(
                f"request {request.key!r} arrived {'without prompt tokens' if not prompt else 'with fill_context set'}:"
                " the tokenizer stage refuses empty prompts and turns fill_context into max_tokens", ErrorCode.INTERNAL)
        open_engines = {name: e for name, e in self.engines.items() if name not in self.draining}
        if not open_engines:
            raise Unavailable("no worker is connected")
        refusals = {name: self._check_fits(request, e.limits) for name, e in open_engines.items()}
        fitting = [(name, open_engines[name]) for name, refusal in refusals.items() if refusal is None]
        if not fitting:
            raise next(refusal for refusal in refusals.values() if refusal is not None)
        if self.num_waiting >= self.config.max_queued_requests:
            raise ResourceExhausted(f"the queue is full ({self.config.max_queued_requests} requests waiting)")
        name, engine = fitting[0] if len(fitting) == 1 else self._best(request, fitting)
        engine.add(request)
        self._owner[request.key] = name
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(len(prompt))
        return name

    def abort(self, key: Hashable) -> str | None:
        """Ends a live request with ABORT; returns its worker's name, None when it is not live."""
        name = self._owner.get(key)
        if name is None or not self.engines[name].abort(key):
            return None
        return name

    def take_events(self, engine: Engine) -> list[Event]:
        """Events of one engine since the last call; forgets the requests that ended."""
        events = engine.take_events()
        for event in events:
            if type(event) is not NewTokens:
                self._owner.pop(event.key, None)
        return events

    # ---- load ----

    @property
    def num_waiting(self) -> int:
        return sum(e.scheduler.num_waiting for e in self.engines.values())

    @property
    def num_running(self) -> int:
        return sum(e.scheduler.num_running for e in self.engines.values())

    @property
    def kv_cache_usage(self) -> float:
        total = sum(e.block_manager.num_blocks for e in self.engines.values())
        used = sum(e.block_manager.num_used_blocks for e in self.engines.values())
        return used / total if total else 0.0

    def totals(self) -> EngineTotals:
        """Counters of every engine this pool has had, the departed included."""
        out = EngineTotals()
        out.add(self._retired)
        for engine in self.engines.values():
            out.add(engine.totals)
        return out

    def state(self) -> EngineState:
        """The pool now, for watchers."""
        engines = list(self.engines.items())
        workers = tuple(
            WorkerEngineState(name, e.scheduler.num_running, e.scheduler.num_waiting,
                              e.block_manager.num_used_blocks / e.block_manager.num_blocks
                              if e.block_manager.num_blocks else 0.0)
            for name, e in engines)
        return EngineState(
            time_unix_s=self.clock(),
            model_id=engines[0][1].limits.model_id if engines else "",
            num_running=self.num_running, num_waiting=self.num_waiting, kv_cache_usage=self.kv_cache_usage,
            totals=self.totals(), workers=workers)

    def __iter__(self) -> Iterator[tuple[str, Engine]]:
        return iter(list(self.engines.items()))

    # ---- internals ----

    @staticmethod
    def _check_fits(request: Request, limits: WorkerLimits) -> FlashStreamError | None:
        """Why the request can never run on a worker with these limits, or None. The tokenizer stage checked the
        context against the pool's shortest (Info's max_model_len) when it connected; a worker with a shorter one
        may have joined since, so the context is checked again here, as the KV cache's size, known only here."""
        num_total = len(request.prompt_token_ids) + request.params.max_tokens
        if num_total > limits.max_model_len:
            return InvalidArgument(
                f"prompt plus max_tokens ({num_total} tokens) exceeds the worker's context ({limits.max_model_len} "
                "tokens)")
        num_blocks = -(-num_total // limits.block_size)
        if num_blocks > limits.num_kv_blocks:
            return InvalidArgument(
                f"prompt plus max_tokens needs {num_blocks} KV blocks, more than the worker's "
                f"{limits.num_kv_blocks}: it can never fit the KV cache"
            )
        return None

    @staticmethod
    def _best(request: Request, fitting: list[tuple[str, Engine]]) -> tuple[str, Engine]:
        probe = Sequence(request.key, list(request.prompt_token_ids), request.params)
        best: tuple[int, int] | None = None
        chosen = fitting[0]
        for name, engine in fitting:
            probe.block_hashes = []  # hashes depend on the block size, which may differ per worker
            score = (engine.block_manager.num_cached_prefix_tokens(probe), -engine.num_requests)
            if best is None or score > best:
                best, chosen = score, (name, engine)
        return chosen
