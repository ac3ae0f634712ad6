"""The worker's view of each sequence, kept up to date from the plans' deltas (pure Python, no torch).

The scheduler sends a sequence whole once (NewSeq) and afterwards only new block ids and how many tokens to
run (a row of CachedSeqs). Generated tokens never come back down: the worker appends each token it samples to the
sequence itself, and because plans are applied strictly in order, a decode scheduled before the previous
step's result reached the scheduler still finds that token here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common.errors import ErrorCode, FlashStreamError, InvalidArgument, NotFound
from services.common.sampling import SamplingParams
from services.common.step import NewSeq, SeqError, StepPlan
from services.worker.sampling.types import SamplingRow
from services.worker.token_view import TokenView


PENDING_TOKEN = -1  # stands for a launched step's sampled token in a sequence's state until the host reads it


def unknown_seq(seq_id: int) -> NotFound:
    return NotFound(f"seq {seq_id}: unknown sequence (never sent as NewSeq, finished or failed)")


def _breaks_grammar(state: SeqState, token_id: int) -> InvalidArgument:
    return InvalidArgument(f"seq {state.seq_id}: token {token_id} breaks its guided grammar")


@dataclass(slots=True)
class SeqState:
    seq_id: int
    token_ids: list[int]  # prompt, then every generated token
    num_prompt_tokens: int
    sampling: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int  # tokens whose KV is in the cache
    grammar: Any = None  # grammar.GrammarState of a guided sequence, advanced with every appended token
    # The sampler's row of this sequence, made once: live views of its prompt and output tokens.
    sampling_row: SamplingRow = field(init=False)
    decode_part: StepSeq | None = field(default=None, init=False)  # its part of every step it decodes in

    def __post_init__(self) -> None:
        npt = self.num_prompt_tokens
        self.sampling_row = SamplingRow(
            self.sampling, TokenView(self.token_ids, 0, npt), TokenView(self.token_ids, npt), self.grammar
        )


@dataclass(slots=True)
class StepSeq:
    """One sequence's part of a step (made by `SequenceTable.apply`, read before the step advances it)."""

    state: SeqState
    num_tokens: int
    samples: bool  # the step reaches the end of the known tokens, so the next one is sampled


@dataclass(frozen=True, slots=True)
class SequenceLimits:
    block_size: int
    num_kv_blocks: int
    max_model_len: int
    vocab_size: int


class SequenceTable:
    """Every sequence of one Step stream, by id."""

    def __init__(self, limits: SequenceLimits, grammars: Any = None) -> None:
        self.limits = limits
        self.grammars = grammars  # grammar.GrammarCache; None: guided sequences are refused
        self.seqs: dict[int, SeqState] = {}
        self.ahead: Any = None  # the Runner's plan applied before its turn (runner.Ahead), at most one

    def __len__(self) -> int:
        return len(self.seqs)

    def apply(self, plan: StepPlan) -> tuple[list[StepSeq], list[SeqError]]:
        """Applies a plan's deltas; returns the step's sequences and per-sequence errors. The sequences that run one
        token come first, then the others, each group in plan order: a step's attention takes its leading one-token
        rows through the decode kernel, and the plan lists new sequences (prompt chunks) before cached ones."""
        seqs = self.seqs
        for seq_id in plan.finished_seq_ids:
            self.drop(seq_id)
        scheduled: list[StepSeq] = []
        errors: list[SeqError] = []
        for new in plan.new_seqs:
            try:
                state = self._add(new)
                self._check(state, new.num_scheduled_tokens)
            except FlashStreamError as exc:
                self.drop(new.seq_id)
                errors.append(SeqError(new.seq_id, exc))
                continue
            self._schedule(state, new.num_scheduled_tokens, scheduled)
        # Cached sequences are most of a busy step's rows: checked inline, `_check` only names what failed.
        max_len, block_size = self.limits.max_model_len, self.limits.block_size
        cached = plan.cached_seqs
        new_block_ids, block_end = cached.new_block_ids, 0
        for seq_id, num, num_new in zip(cached.seq_ids, cached.num_scheduled_tokens, cached.num_new_blocks,
                                        strict=True):
            state = seqs.get(seq_id)
            block_end += num_new
            try:
                if state is None:
                    raise unknown_seq(seq_id)
                if num_new:
                    self._append_blocks(state, new_block_ids[block_end - num_new:block_end])
                end = state.num_computed_tokens + num
                past_blocks = -(-end // block_size) > len(state.block_ids)
                if num < 0 or end > len(state.token_ids) or end > max_len or past_blocks:
                    self._check(state, num)
            except FlashStreamError as exc:
                self.drop(seq_id)
                errors.append(SeqError(seq_id, exc))
                continue
            if num == 1 and end == len(state.token_ids):  # a decode: the same part every step
                scheduled.append(state.decode_part or self._decode_part(state))
            elif num > 0:
                scheduled.append(StepSeq(state, num, end == len(state.token_ids)))
        if any(seq.num_tokens != 1 for seq in scheduled):
            scheduled.sort(key=lambda seq: seq.num_tokens != 1)  # stable: one-token rows first, plan order kept
        return scheduled, errors

    @staticmethod
    def _decode_part(state: SeqState) -> StepSeq:
        state.decode_part = StepSeq(state, 1, True)
        return state.decode_part

    @staticmethod
    def _schedule(state: SeqState, num_tokens: int, scheduled: list[StepSeq]) -> None:
        if num_tokens > 0:
            samples = state.num_computed_tokens + num_tokens == len(state.token_ids)
            scheduled.append(StepSeq(state, num_tokens, samples))

    def advance(self, seq: StepSeq, sampled_token: int | None) -> None:
        """Marks the step's tokens computed and appends the sampled token (or PENDING_TOKEN, see `resolve_launched`).
        Raises InvalidArgument when a guided sequence's grammar refuses the token (the token is appended all the
        same)."""
        seq.state.num_computed_tokens += seq.num_tokens
        if sampled_token is not None:
            seq.state.token_ids.append(sampled_token)
            if sampled_token != PENDING_TOKEN:
                self._follow_grammar(seq.state, sampled_token)

    @staticmethod
    def advance_launched(scheduled: list[StepSeq]) -> list[int | None]:
        """`advance` for every sequence of a launched step, with PENDING_TOKEN where its token is sampled: returns
        the index of each placeholder in its sequence's tokens (None where the row samples nothing)."""
        where: list[int | None] = []
        for seq in scheduled:
            state = seq.state
            state.num_computed_tokens += seq.num_tokens
            if seq.samples:
                tokens = state.token_ids
                tokens.append(PENDING_TOKEN)
                where.append(len(tokens) - 1)
            else:
                where.append(None)
        return where

    @staticmethod
    def resolve_launched(
        seqs: list[StepSeq], where: list[int], token_ids: list[int]
    ) -> list[tuple[int, FlashStreamError]]:
        """Puts a launched step's sampled tokens where their PENDING_TOKENs stand (seqs[k]'s at where[k] becomes
        token_ids[k]) and advances the guided rows' grammars with them. Returns (k, error) for each row whose grammar
        refused its token, as `advance` raises (the token stays put all the same)."""
        refused: list[tuple[int, FlashStreamError]] = []
        for k, (seq, index, token_id) in enumerate(zip(seqs, where, token_ids, strict=True)):
            state = seq.state
            state.token_ids[index] = token_id
            grammar = state.grammar
            # Inline rather than through _follow_grammar: this loop runs per guided row between reading a step's
            # tokens and filling the next step's masks, while the device waits for them.
            if grammar is not None and not grammar.accept(token_id):
                refused.append((k, _breaks_grammar(state, token_id)))
        return refused

    @staticmethod
    def _follow_grammar(state: SeqState, token_id: int) -> None:
        if state.grammar is not None and not state.grammar.accept(token_id):
            raise _breaks_grammar(state, token_id)

    def drop(self, seq_id: int) -> None:
        state = self.seqs.pop(seq_id, None)
        if state is not None:
            state.decode_part = None  # it refers back to the state: freed at once, not by a collection

    def drop_state(self, state: SeqState) -> None:
        """Forgets the sequence if the table still holds this state of it (not one resent since)."""
        if self.seqs.get(state.seq_id) is state:
            self.drop(state.seq_id)

    def _add(self, new: NewSeq) -> SeqState:
        if not new.token_ids:
            raise InvalidArgument(f"seq {new.seq_id}: NewSeq has no token ids")
        if not 0 <= new.num_prompt_tokens <= len(new.token_ids):
            raise InvalidArgument(
                f"seq {new.seq_id}: num_prompt_tokens {new.num_prompt_tokens} exceeds its {len(new.token_ids)} tokens"
            )
        vocab = self.limits.vocab_size
        # An id past the embedding would fault the device: the tokenizer stage refuses such prompts. min and max run
        # in C; a prompt's thousands of ids checked one by one in Python are host time the device waits for.
        if min(new.token_ids) < 0 or max(new.token_ids) >= vocab:
            bad = next(t for t in new.token_ids if not 0 <= t < vocab)
            raise FlashStreamError(f"seq {new.seq_id}: token id {bad} is outside the vocabulary of {vocab}, which "
                                   "the tokenizer stage checks", ErrorCode.INTERNAL)
        self._check_blocks(new.seq_id, new.block_ids)
        grammar = None
        guided = new.sampling.guided
        if guided is not None:
            if self.grammars is None:
                raise InvalidArgument(f"seq {new.seq_id}: this worker cannot run guided decoding")
            # A resent (preempted) sequence brings its generated tokens: the matcher replays them.
            grammar = self.grammars.start(guided, new.token_ids[new.num_prompt_tokens:])
        state = SeqState(new.seq_id, list(new.token_ids), new.num_prompt_tokens, new.sampling, list(new.block_ids),
                         new.num_computed_tokens, grammar)
        self.drop(new.seq_id)  # a resent sequence (after preemption) replaces the old state
        self.seqs[new.seq_id] = state
        return state

    def _append_blocks(self, state: SeqState, block_ids: list[int]) -> None:
        self._check_blocks(state.seq_id, block_ids)
        state.block_ids.extend(block_ids)

    def _check_blocks(self, seq_id: int, block_ids: list[int]) -> None:
        for block_id in block_ids:
            if not 0 <= block_id < self.limits.num_kv_blocks:
                raise InvalidArgument(
                    f"seq {seq_id}: block id {block_id} is out of range [0, {self.limits.num_kv_blocks})"
                )

    def _check(self, state: SeqState, num_scheduled: int) -> None:
        end = state.num_computed_tokens + num_scheduled
        if num_scheduled < 0 or end > len(state.token_ids):
            raise InvalidArgument(
                f"seq {state.seq_id}: {num_scheduled} tokens scheduled after {state.num_computed_tokens} computed, "
                f"but only {len(state.token_ids)} tokens are known"
            )
        if end > self.limits.max_model_len:
            raise FlashStreamError(
                f"seq {state.seq_id}: {end} tokens exceed max_model_len {self.limits.max_model_len}, which the "
                "tokenizer stage and the scheduler check", ErrorCode.INTERNAL)
        needed = -(-end // self.limits.block_size)
        if needed > len(state.block_ids):
            raise InvalidArgument(
                f"seq {state.seq_id}: {end} tokens need {needed} KV blocks but its block table has {len(state.block_ids)}"
            )
