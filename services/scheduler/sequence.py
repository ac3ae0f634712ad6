"""One request's state inside the scheduler: its tokens, counters, block table and status."""

from __future__ import annotations

import enum
from collections.abc import Hashable
from services.common.sampling import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, or preempted and waiting to be recomputed
    RUNNING = "running"  # holds blocks and is scheduled every step it has work
    FINISHED = "finished"  # ended (normally, aborted or failed); holds nothing


class Sequence:
    """A request as the scheduler sees it.

    Counters, all in tokens:
      len(token_ids)        prompt plus generated tokens whose ids are known here
      num_placeholders      tokens sampled by steps still in flight (their ids arrive with the step's result;
                            the worker feeds them into its next step itself)
      num_tokens            len(token_ids) + num_placeholders
      num_computed_tokens   tokens whose KV is computed or scheduled to be (prefix hits included)
      num_cached_tokens     prompt tokens served from the prefix cache at admission
      token_limit           len(token_ids) at which it ends for length (max_tokens, or the context)
    A sequence samples in a step when that step brings num_computed_tokens up to num_tokens.
    """

    __slots__ = (
        "key", "token_ids", "num_prompt_tokens", "params", "priority", "arrival_order", "deadline",
        "arrival_time", "seq_id", "status", "block_table", "num_computed_tokens", "num_cached_tokens",
        "num_placeholders", "num_sent_blocks", "is_sent", "block_hashes", "num_registered_blocks",
        "first_scheduled_time", "first_token_time", "last_token_time", "num_emitted_tokens", "num_preemptions",
        "traceparent", "token_limit", "stop_ids",
    )

    def __init__(
        self,
        key: Hashable,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int = 0,
        deadline: float = 0.0,
        arrival_time: float = 0.0,
        *,
        max_model_len: int = 1 << 62,
        eos_token_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.key = key  # the caller's id for the request (e.g. (stream, request_id))
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.priority = priority
        self.arrival_order = 0  # FCFS rank within a priority, set by the scheduler
        self.deadline = deadline  # wall-clock seconds; 0 means none
        self.arrival_time = arrival_time
        self.seq_id = -1  # id on the worker stream, new at each admission; -1 while waiting
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.num_placeholders = 0
        self.num_sent_blocks = 0  # leading entries of block_table the worker already has
        self.is_sent = False  # the worker holds this incarnation (NewSeq sent)
        self.block_hashes: list[int] = []  # chain hash of each full block of known tokens
        self.num_registered_blocks = 0  # leading blocks offered to the prefix cache
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        self.num_emitted_tokens = 0  # generated tokens already sent upstream
        self.traceparent = ""  # W3C trace context of the request's scheduler span (sent with NewSeq)
        self.num_preemptions = 0
        self.token_limit = min(len(prompt_token_ids) + params.max_tokens, max_model_len)
        # Tokens that end it once min_tokens are out (the stop token itself is not part of the output).
        self.stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else eos_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + self.num_placeholders

    @property
    def num_output_tokens(self) -> int:
        """Generated tokens whose ids are known."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def reset_for_recompute(self) -> None:
        """Forgets everything the worker held: the sequence will be sent whole again."""
        self.status = SequenceStatus.WAITING
        self.seq_id = -1
        self.block_table = []
        self.num_computed_tokens = 0
        self.num_placeholders = 0
        self.num_sent_blocks = 0
        self.is_sent = False
        self.num_registered_blocks = 0
        self.num_preemptions += 1

    def __repr__(self) -> str:
        return (
            f"Sequence(key={self.key!r}, seq_id={self.seq_id}, status={self.status.value}, "
            f"num_tokens={self.num_tokens}, num_computed_tokens={self.num_computed_tokens}, "
            f"blocks={self.block_table})"
        )
