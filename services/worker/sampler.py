"""The worker's batched sampler: one next token per row of the logits, every feature batched on the device.

Per row, in this order:
0. logit_bias (OpenAI): each listed token's value is added to its logit.
1. Penalties. Repetition (Hugging Face / CTRL): every token of the prompt or the output has a positive logit
   divided by `repetition_penalty` and a negative one multiplied by it. Then, on output tokens only (OpenAI):
   `frequency_penalty` times the token's number of occurrences and `presence_penalty` once are subtracted.
2. min_tokens: while fewer than `min_tokens` tokens were generated, the EOS ids (unless `ignore_eos`) and the
   `stop_token_ids` get -inf. Stopping itself is the scheduler's business; the sampler only masks. Then a row
   with a grammar (`SamplingRow.grammar`) gets -inf on every token its matcher does not allow next; the masks
   are filled on the host for those rows only (see `services.worker.grammar`).
3. Greedy rows (`temperature == 0` or `top_k == 1`) take the argmax of these logits (first index on ties).
4. Other rows: logits divided by `temperature`; top-k (ties with the k-th logit survive); top-p over the
   renormalised top-k survivors (the smallest set of best tokens whose probability reaches `top_p`); min-p
   (tokens with probability at least `min_p` times the best one's); then one draw from the softmax of what is
   left, as an exponential race: `argmax(logits + Gumbel noise)`, the noise a counter-based hash of (row key,
   token id) (see `services.worker.sampling.noise`); on CUDA one kernel computes it and takes the argmax in one
   pass over the logits, elsewhere torch ops compute the same bits.
5. Seeds: a seeded row's key mixes its seed with the number of tokens generated so far, so its token depends only
   on those, the vocabulary size and its own logits: never on batch-mates, row position or device.
   Unseeded rows draw their keys from the device's default generator, fresh for each row and step.
6. Logprobs: log_softmax of the logits after penalties, min_tokens masking and temperature (temperature 1 for
   greedy rows), before top-k/top-p/min-p truncation. A row asking for `logprobs = n` gets the chosen token's
   logprob and the n best tokens' (best first), whether or not the chosen token is among them.

Entry points: calling a `Sampler` gives a `SamplerOutput` on the host. `Sampler.sample` gives a `DeviceSample`
whose `token_ids` stay on the device (to feed the next step's forward pass before the host reads anything) and
whose `to_host()` makes the copy; it is `prepare` (the host's part) then `sample_prepared` (the device's).
`adjusted_logits` (after steps 1 and 2) and `support` (the tokens each row can be given) expose the intermediate
results. A logits shape, dtype or row count that does not match, or token ids
outside the vocabulary in a penalised row, raise ValueError.

Cost: rows that use no feature cost nothing for it; an all-greedy batch without penalties, min_tokens or
logprobs is one argmax, and a batch sampled at temperature 1 using no other feature is one race over the logits
as they are (no fp32 copy). Per-row work on the host only builds small index and parameter tensors (penalised rows
also flatten their token ids, O(tokens); guided rows fill their masks, in one call over threads); the only
device-to-host copy is the one that reads the results.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kernels._checks import FLOAT_DTYPES
from kernels.gumbel_race import gumbel_race, gumbel_race_ref
from services.common.sampling import SamplingParams
from services.worker.sampling import ops
from services.worker.sampling.batch import SamplingBatch
from services.worker.sampling.noise import random_keys
from services.worker.sampling.results import DeviceSample
from services.worker.sampling.types import SamplerOutput, SamplingRow, TokenLogprobs

__all__ = ["DeviceSample", "Sampler", "SamplerOutput", "SamplingRow", "TokenLogprobs"]


class Sampler:
    """Samples one token per row; stateless between calls."""

    def __init__(self, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        bad = [t for t in eos_token_ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"eos_token_ids {bad} are outside the vocabulary [0, {vocab_size})")
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(dict.fromkeys(eos_token_ids))

    def __call__(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> SamplerOutput:
        """logits: [num_rows, vocab_size], any float dtype (math in fp32), on the model's device."""
        return self.sample(logits, rows).to_host()

    def sample(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> DeviceSample:
        """Like calling the sampler, but leaves the results on the device and copies nothing back yet."""
        return self.sample_prepared(logits, self.prepare(logits, rows))

    def prepare(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> SamplingBatch:
        """The host's part of `sample`: checks the inputs and builds the step's metadata on the logits' device (the
        guided rows' masks filled on the host and copied over); the logits are not read yet."""
        return self._batch(logits, rows)

    def sample_prepared(self, logits: torch.Tensor, batch: SamplingBatch) -> DeviceSample:
        """The device's part of `sample`, on the metadata `prepare` built for these logits."""
        with torch.inference_mode():
            if batch.is_plain_greedy:
                # argmax is order-preserving across float dtypes, so no fp32 copy is needed.
                return DeviceSample.pack(logits.argmax(dim=-1), None, None, (), ())
            if _is_plain_sampled(batch) and logits.dtype in FLOAT_DTYPES and logits.stride(-1) == 1:
                # The race upcasts the logits as it reads them, so again no fp32 copy.
                return DeviceSample.pack(self._race(logits, batch), None, None, (), ())
            return self._draw(self._adjust(logits, batch), batch)

    def warm_up(self, device: torch.device) -> list[list[int]]:
        """Samples zero logits once down each path a step can take (every row at temperature 1, seeded and not;
        sampled rows beside a greedy one; temperature with top-p), so that the kernels these paths launch compile
        at start-up rather than in the first request's step (about a second on an H200). Returns the tokens drawn."""
        logits = torch.zeros(2, self.vocab_size, dtype=torch.float32, device=device)  # [rows, vocab], as a step's
        greedy, plain = SamplingParams(), SamplingParams(temperature=1.0)
        seeded, nucleus = SamplingParams(temperature=1.0, seed=0), SamplingParams(temperature=0.8, top_p=0.95)
        pairs = ((plain, seeded), (greedy, seeded), (greedy, plain), (nucleus, seeded))
        return [self(logits, [SamplingRow(p, (), ()) for p in pair]).token_ids for pair in pairs]

    def adjusted_logits(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """fp32 logits [num_rows, vocab_size] after penalties and min_tokens masking: what greedy rows argmax."""
        batch = self._batch(logits, rows)
        with torch.inference_mode():
            return self._adjust(logits, batch)

    def support(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """[num_rows, vocab_size] bool: the tokens each row can be given (a greedy row: its argmax only)."""
        batch = self._batch(logits, rows)
        with torch.inference_mode():
            x = self._adjust(logits, batch)
            allowed = torch.zeros_like(x, dtype=torch.bool).scatter_(1, x.argmax(dim=-1, keepdim=True), True)
            if not batch.num_sampled:
                return allowed
            if batch.temperature is not None:
                x.div_(batch.temperature)
            if batch.truncation is not None:
                ops.truncate(x, batch.truncation)
            sampled = x > float("-inf")
            if batch.sample_rows is None:
                return sampled
            return allowed.index_copy_(0, batch.sample_rows, sampled.index_select(0, batch.sample_rows))

    def _batch(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> SamplingBatch:
        """Checks the inputs and builds the step's metadata on the logits' device."""
        if logits.dim() != 2 or logits.shape[1] != self.vocab_size:
            raise ValueError(f"logits must be [num_rows, {self.vocab_size}], got {list(logits.shape)}")
        if not logits.is_floating_point():
            raise ValueError(f"logits must be floating point, got {logits.dtype}")
        if logits.shape[0] != len(rows):
            raise ValueError(f"logits have {logits.shape[0]} rows but {len(rows)} sampling rows were given")
        return SamplingBatch.build(rows, self.vocab_size, self.eos_token_ids, logits.device)

    @staticmethod
    def _adjust(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        # A contiguous fp32 copy [num_rows, vocab_size]: the transforms work in place on flat views of it.
        x = logits.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        ops.adjust(x, batch)
        return x

    def _draw(self, x: torch.Tensor, batch: SamplingBatch) -> DeviceSample:
        """Steps 3 to 6 on adjusted logits x [num_rows, vocab_size] fp32, which it overwrites."""
        token_ids = x.argmax(dim=-1) if batch.num_greedy else None  # [num_rows]
        if batch.temperature is not None:
            x.div_(batch.temperature)
        logprobs = None  # [L, vocab_size]
        if batch.logprob_row_ids:
            logprobs = (x if batch.logprob_rows is None else x.index_select(0, batch.logprob_rows)).log_softmax(-1)
        if batch.num_sampled:
            if batch.truncation is not None:
                ops.truncate(x, batch.truncation)
            sampled = self._race(x, batch)  # [num_sampled]
            if token_ids is None:
                token_ids = sampled
            else:
                token_ids.index_copy_(0, batch.sample_rows, sampled)
        return DeviceSample.pack(token_ids, logprobs, batch.logprob_rows, batch.logprob_row_ids, batch.logprob_counts)

    @staticmethod
    def _race(x: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """One draw per sampled row: argmax of the row's logits x [num_rows, vocab_size] (truncated and scaled,
        any float dtype; not written to) plus its Gumbel noise. [num_sampled] int64."""
        keys = batch.seeded_keys  # [num_sampled, 2] int64
        if batch.num_unseeded:
            keys = random_keys(batch.num_sampled, x.device)
            if batch.seeded_keys is not None:
                keys.index_copy_(0, batch.seeded_local, batch.seeded_keys)
        race = gumbel_race if x.is_cuda else gumbel_race_ref
        return race(x, keys, batch.sample_rows)


def _is_plain_sampled(batch: SamplingBatch) -> bool:
    """Whether every row is sampled from its raw logits (temperature 1, no other feature): the race reads them."""
    return (
        batch.num_greedy == 0
        and batch.temperature is None
        and batch.truncation is None
        and batch.penalties is None
        and batch.bias_flat is None
        and batch.grammar is None
        and batch.banned_flat is None
        and not batch.logprob_row_ids
    )
