"""Result cache keys: a namespace, a version, and a hash of exactly the fields that shape the answer.

Fields that change only scheduling or bookkeeping (priority, timeout, request id, clocks) are left out, so
requests that differ only in them share an answer. Everything that can change a token or a byte of text is in.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gateway.schema import GenerationRequest, ModelCard

# Bump when the hashed fields or the stored value's layout change: old entries then simply miss.
KEY_VERSION = "v1"


def tenant_of(api_key: str) -> str:
    """The tenant an API key stands for: a hash, so the key itself never reaches the cache store."""
    if not api_key:
        return ""
    return hashlib.sha256(b"flashstream-tenant:" + api_key.encode()).hexdigest()[:32]


def tenant_from_authorization(authorization: str | None, keys_enabled: bool) -> str:
    """The tenant of an `Authorization: Bearer <key>` value ("" when the gateway checks no keys)."""
    if not keys_enabled or not authorization or not authorization.startswith("Bearer "):
        return ""
    return tenant_of(authorization[len("Bearer "):].strip())


def is_cacheable(request: GenerationRequest) -> bool:
    """Only answers that the same request always reproduces (greedy or seeded) are worth storing."""
    return request.sampling.is_reproducible and not request.bypass_cache


def key_fields(request: GenerationRequest, card: ModelCard, tenant: str) -> dict[str, Any]:
    """Every field that shapes the answer, as plain JSON values."""
    s = request.sampling
    o = request.options
    if request.messages is not None:
        source: dict[str, Any] = {
            "messages": [[turn.role, turn.content] for turn in request.messages],
            "add_generation_prompt": request.add_generation_prompt,
        }
        if request.tools or any(t.tool_calls or t.tool_call_id or t.name for t in request.messages):
            source["tool_turns"] = [
                [[[c.id, c.name, c.arguments_json] for c in t.tool_calls], t.tool_call_id, t.name]
                for t in request.messages
            ]
            source["tools"] = [[t.name, t.description, t.parameters_json] for t in request.tools]
            source["tool_choice"] = [request.tool_choice, request.forced_tool, request.single_tool_call]
    elif request.token_ids is not None:
        source = {"token_ids": list(request.token_ids)}
    else:
        source = {"prompt": request.prompt}
    fields = {
        "model": card.id,
        "revision": card.revision,
        "tenant": tenant,
        "input": source,
        "sampling": {
            "max_tokens": s.max_tokens,
            "min_tokens": s.min_tokens,
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "min_p": s.min_p,
            "repetition_penalty": s.repetition_penalty,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "seed": s.seed,
            "stop_token_ids": list(s.stop_token_ids),
            "ignore_eos": s.ignore_eos,
            "logprobs": s.logprobs,
            "logit_bias": [list(pair) for pair in s.logit_bias],
        },
        "text": {
            "stop": list(o.stop),
            "include_stop_str_in_output": o.include_stop_str_in_output,
            "skip_special_tokens": o.skip_special_tokens,
            "add_special_tokens": o.add_special_tokens,
            "echo": o.echo_prompt,
        },
        "fill_context": s.fill_context,
    }
    if s.guided is not None:  # present only when set, so that keys of unguided requests stay as they were
        fields["sampling"]["guided"] = [s.guided.kind, s.guided.spec]
    return fields


def result_key(request: GenerationRequest, card: ModelCard, tenant: str, namespace: str = "flashstream") -> str:
    """`<namespace>:result:<version>:<sha256 of the canonical JSON of key_fields>`."""
    canonical = json.dumps(key_fields(request, card, tenant), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{namespace}:result:{KEY_VERSION}:{digest}"
