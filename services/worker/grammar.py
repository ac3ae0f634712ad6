"""Guided decoding on the worker: grammars compiled once per spec and cached, one matcher per sequence.

The worker is where the vocabulary and the sampler meet, so it compiles: a `Guided` spec (JSON schema, any JSON
object, regex, EBNF grammar, structural tag or forced tool call) becomes an xgrammar `CompiledGrammar` for this model's
tokenizer, cached by the sha256 of (kind, spec) in an LRU of `max_entries`. A sequence's `GrammarState` holds
its matcher and is advanced with every token the worker appends to it. A sequence sent again after preemption
(NewSeq with its generated tokens) gets a fresh matcher fed those tokens, so the recomputed sequence resumes
exactly where it was; prefix-cache hits change only which KV is computed, never the tokens, so they need nothing.
A step's masks are filled by `fill_bitmask`: every guided row's, into one host tensor, in one call into xgrammar
on one thread (its thread pool made a step's fill slower on every host measured, the H200 hosts included).

JSON is compiled compact (no free whitespace between tokens): a sampler may otherwise spend any number of
tokens on whitespace, which a length cut turns into invalid output.

Once the grammar is complete the mask allows only the stop tokens (the model's EOS ids), so the output
ends there; that is why guided sampling refuses `ignore_eos` and `min_tokens` (see SamplingParams).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.errors import InvalidArgument
from services.common.sampling import Guided, grammar_error_message
from services.common.tool_grammar import tool_calls_structural_tag

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_MAX_GRAMMARS = 256
FILL_THREADS = 1  # xgrammar threads filling a step's masks (bench/structured.py: "mask fill ms")


def guided_key(guided: Guided) -> str:
    """The cache key of a spec: sha256 of its kind and text."""
    return hashlib.sha256(f"{guided.kind}\0{guided.spec}".encode()).hexdigest()


# xgrammar 0.2.8 writes the characters of a length-bounded JSON string (maxLength, minLength) as this class,
# which lets raw control characters (U+0000 to U+001F) into the string, and JSON forbids them there. The
# grammars it generates from JSON are therefore compiled from their EBNF text with the class narrowed.
_BOUNDED_STRING_CHAR = r'[^\"\\\r\n]'
_JSON_STRING_CHAR = r'[^\0-\x1f\"\\]'


def _json_safe(grammar: Any) -> str:
    """The EBNF of an xgrammar Grammar generated from JSON, with string characters as JSON allows them."""
    return str(grammar).replace(_BOUNDED_STRING_CHAR, _JSON_STRING_CHAR)


def compile_guided(compiler: Any, guided: Guided) -> Any:
    """An xgrammar CompiledGrammar; raises InvalidArgument naming the problem when the spec does not compile."""
    import xgrammar

    try:
        if guided.kind == "json_schema":
            return compiler.compile_grammar(_json_safe(xgrammar.Grammar.from_json_schema(
                guided.spec, any_whitespace=False)))
        if guided.kind == "json_object":
            return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
        if guided.kind == "regex":
            return compiler.compile_regex(guided.spec)
        if guided.kind == "grammar":
            return compiler.compile_grammar(guided.spec)
        tag = tool_calls_structural_tag(guided.spec) if guided.kind == "tool_calls" else guided.spec
        return compiler.compile_grammar(_json_safe(xgrammar.Grammar.from_structural_tag(tag)))
    except InvalidArgument:
        raise
    except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError with the parser's message
        raise InvalidArgument(f"guided {guided.kind} does not compile: {grammar_error_message(exc)}") from exc


@dataclass(slots=True)
class GrammarState:
    """One sequence's matcher; `accept` advances it by one generated token."""

    matcher: Any  # xgrammar.GrammarMatcher
    stop_token_ids: frozenset[int]  # the tokens that end the grammar (the matcher's stop tokens)
    # The grammar accepted its stop token. With several steps in flight the scheduler may run more steps before it
    # sees that token; it drops what those steps sample, so the row is then left unmasked.
    ended: bool = False

    def accept(self, token_id: int) -> bool:
        """False when the grammar does not allow the token; tokens after its end are accepted (and dropped
        upstream)."""
        if self.ended:
            return True
        if not self.matcher.accept_token(token_id):
            return False
        # Only a stop token can end the grammar: the matcher is asked only then.
        self.ended = token_id in self.stop_token_ids and bool(self.matcher.is_terminated())
        return True


def bitmask_words(vocab_size: int) -> int:
    """Width of a row of token bitmask: int32 words, one bit per token id (xgrammar's layout)."""
    return -(-vocab_size // 32)


def fill_bitmask(states: Sequence[GrammarState], bitmask: torch.Tensor) -> None:
    """Fills row j of bitmask ([>= len(states), bitmask_words] int32 in host memory) with the tokens states[j]
    allows next (bit set = allowed), in one call into xgrammar."""
    if len(states) == 1:
        states[0].matcher.fill_next_token_bitmask(bitmask, 0)
    elif states:
        _batch_matcher().batch_fill_next_token_bitmask([s.matcher for s in states], bitmask)


@functools.cache
def _batch_matcher() -> Any:  # xgrammar.BatchGrammarMatcher
    """One xgrammar batch matcher for the process, made on first use."""
    import xgrammar

    return xgrammar.BatchGrammarMatcher(max_threads=FILL_THREADS)


class GrammarCache:
    """Compiles specs for one model's tokenizer (built on first use) and keeps the newest `max_entries`."""

    def __init__(
        self, tokenizer_dir: str | Path, vocab_size: int, stop_token_ids: Sequence[int],
        max_entries: int = DEFAULT_MAX_GRAMMARS, max_threads: int = 8,
    ) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self.tokenizer_dir = str(tokenizer_dir)
        self.vocab_size = vocab_size
        self.stop_token_ids = list(dict.fromkeys(stop_token_ids))
        self.max_entries = max_entries
        self.max_threads = max_threads
        self._compiler: Any = None
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        self.num_compiled = 0  # specs compiled (cache misses)
        self.num_hits = 0
        self.compile_s = 0.0  # total time spent compiling

    @property
    def compiler(self) -> Any:
        if self._compiler is None:
            import transformers
            import xgrammar

            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(self.tokenizer_dir)
            except (OSError, ValueError) as exc:
                raise InvalidArgument(
                    f"guided decoding needs the model's tokenizer files, and {self.tokenizer_dir!r} has none: {exc}"
                ) from exc
            info = xgrammar.TokenizerInfo.from_huggingface(
                tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids or None
            )
            # The compiler's own cache is off: this class is the one cache, bounded by entries.
            self._compiler = xgrammar.GrammarCompiler(info, max_threads=self.max_threads, cache_enabled=False)
        return self._compiler

    def get(self, guided: Guided) -> Any:
        """The compiled grammar of a spec, compiling it on first sight."""
        key = guided_key(guided)
        grammar = self._grammars.get(key)
        if grammar is not None:
            self._grammars.move_to_end(key)
            self.num_hits += 1
            return grammar
        start = time.perf_counter()
        grammar = compile_guided(self.compiler, guided)
        elapsed = time.perf_counter() - start
        self.compile_s += elapsed
        self.num_compiled += 1
        log.debug("compiled guided %s in %.1f ms", guided.kind, elapsed * 1e3)
        self._grammars[key] = grammar
        if len(self._grammars) > self.max_entries:
            self._grammars.popitem(last=False)
        return grammar

    def __len__(self) -> int:
        return len(self._grammars)

    def start(self, guided: Guided, output_token_ids: Sequence[int]) -> GrammarState:
        """A matcher for a sequence that has generated `output_token_ids` so far (none for a new request)."""
        import xgrammar

        matcher = xgrammar.GrammarMatcher(self.get(guided))
        state = GrammarState(matcher, frozenset(matcher.stop_token_ids))
        for i, token_id in enumerate(output_token_ids):
            if not state.accept(token_id):
                raise InvalidArgument(
                    f"generated token {i} (id {token_id}) does not follow the request's guided {guided.kind}"
                )
        return state
