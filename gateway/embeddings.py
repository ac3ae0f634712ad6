"""Embeddings through the gateway: resolve the model, encode, answer what the cache holds, compute the rest.

The tokenizer stage encodes every input first (under the model's limit), so the cache is keyed by exact token
ids and a text and its ids share an entry. Only the inputs the cache lacks go on to the workers, in one call
(an input repeated within a request is computed once); the answer keeps input order and says per vector
whether it came from the cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from flashstream.v1 import common_pb2, tokenizer_pb2

from gateway.cache.embedding_cache import EmbeddingCache, VectorOptions
from gateway.errors import RequestError
from gateway.schema import ModelCard
from services.common.errors import FlashStreamError, Unavailable
from services.common.metrics import Metrics

MAX_INPUTS = 2048  # OpenAI's limit of inputs per request


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """texts or token_ids, not both."""

    model: str
    texts: tuple[str, ...] = ()
    token_ids: tuple[tuple[int, ...], ...] = ()
    normalize: bool | None = None  # None: the model's default
    dimensions: int = 0  # 0: all
    truncate: bool = False
    use_cache: bool = True

    @property
    def num_inputs(self) -> int:
        return len(self.texts) + len(self.token_ids)


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    model: str
    vectors: list[np.ndarray]  # float32, one per input
    cached: list[bool]
    prompt_tokens: int


class EmbeddingService:
    def __init__(self, core, router, cache: EmbeddingCache | None, metrics: Metrics) -> None:  # noqa: ANN001
        self.core = core  # GatewayCore: model cards, draining, timeouts, error counting
        self.router = router  # TokenizerRouter: the replica of a model
        self.cache = cache
        self.metrics = metrics

    def check(self, request: EmbeddingRequest, card: ModelCard) -> None:
        if request.texts and request.token_ids:
            raise RequestError("send texts or token ids, not both", "input")
        if not 1 <= request.num_inputs <= MAX_INPUTS:
            raise RequestError(f"input must hold between 1 and {MAX_INPUTS} items, got {request.num_inputs}", "input")
        if request.dimensions < 0 or (card.hidden_size and request.dimensions > card.hidden_size):
            raise RequestError(f"dimensions must be between 1 and {card.hidden_size} for model '{card.id}', "
                               f"got {request.dimensions}", "dimensions")
        for ids in request.token_ids:  # the tokenizer checks them against the vocabulary; here, the wire's range
            bad = [t for t in ids if not 0 <= t < 2**32]
            if bad:
                raise RequestError(f"input token ids must be between 0 and {2**32 - 1}, got {bad[0]}", "input")

    async def embed(self, request: EmbeddingRequest, tenant: str = "",
                    time_limit_s: float | None = None) -> EmbeddingResult:
        try:
            return await self._embed(request, tenant, time_limit_s)
        except FlashStreamError as exc:
            self.core.record_error(exc, self.core.served_model(request.model))
            raise

    async def _embed(self, request: EmbeddingRequest, tenant: str, time_limit_s: float | None) -> EmbeddingResult:
        if self.core.draining:
            raise Unavailable("the gateway is shutting down; retry on another replica")
        card = self.core.resolve_model(request.model)
        self.check(request, card)
        deadline = time.monotonic() + min(self.core.request_timeout_s, time_limit_s or self.core.request_timeout_s)
        conn = self.router.pick(card.id)
        encoded = await conn.call("EncodeInputs", tokenizer_pb2.EncodeInputsRequest(
            model=card.id, truncate=request.truncate,
            inputs=[tokenizer_pb2.EmbedInput(text=t) for t in request.texts]
            + [tokenizer_pb2.EmbedInput(tokens=common_pb2.TokenIds(token_ids=ids)) for ids in request.token_ids],
        ), deadline - time.monotonic())
        inputs = [list(item.token_ids) for item in encoded.inputs]
        options = VectorOptions(request.normalize, request.dimensions)
        use_cache = self.cache is not None and request.use_cache
        lookup_start = time.perf_counter()
        keys = self.cache.keys(card, tenant, options, inputs) if use_cache else [str(i) for i in range(len(inputs))]
        vectors = await self.cache.lookup(keys) if use_cache else [None] * len(inputs)
        cached = [v is not None for v in vectors]
        metrics = self.metrics.for_model(card.id)
        if use_cache:
            metrics.cache_lookup.labels("embedding").observe(time.perf_counter() - lookup_start)
            metrics.embedding_cache_hits.inc(sum(cached))
            metrics.embedding_cache_misses.inc(len(cached) - sum(cached))
        todo: dict[str, int] = {}  # key of each input to compute → its first index
        for i, key in enumerate(keys):
            if vectors[i] is None:
                todo.setdefault(key, i)
        if todo:
            computed = await conn.call("Embed", common_pb2.EmbedTokensRequest(
                model=card.id, inputs=[common_pb2.TokenIds(token_ids=inputs[i]) for i in todo.values()],
                normalize=request.normalize, dimensions=request.dimensions,
            ), deadline - time.monotonic())
            by_key = {key: np.asarray(e.values, dtype=np.float32) for key, e in zip(todo, computed.embeddings)}
            vectors = [v if v is not None else by_key[key] for key, v in zip(keys, vectors)]
            if use_cache:
                await self.cache.save(list(by_key), list(by_key.values()))
        metrics.embedding_input_tokens.inc(sum(len(ids) for ids in inputs))
        return EmbeddingResult(card.id, vectors, cached, sum(len(ids) for ids in inputs))
