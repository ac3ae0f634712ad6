"""Result cache keys: exactly the fields that shape the answer change the key."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.cache.key import is_cacheable, result_key, tenant_from_authorization, tenant_of
from gateway.schema import ChatTurn, GenerationRequest, ModelCard
from services.common.sampling import SamplingParams
from services.common.text_options import TextOptions

CARD = ModelCard(id="m", revision="r1")
BASE = GenerationRequest(model="m", sampling=SamplingParams(max_tokens=8), prompt="Hi")


def _key(request: GenerationRequest = BASE, card: ModelCard = CARD, tenant: str = "") -> str:
    return result_key(request, card, tenant)


def test_key_is_namespaced_versioned_and_a_sha256() -> None:
    key = _key()
    prefix, digest = key.rsplit(":", 1)
    assert prefix == "flashstream:result:v1"
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert result_key(BASE, CARD, "", namespace="other").startswith("other:result:v1:")
    assert result_key(BASE, CARD, "", namespace="other").endswith(digest)


@pytest.mark.parametrize("field,value", [
    ("max_tokens", 9), ("min_tokens", 1), ("temperature", 0.5), ("top_k", 5), ("top_p", 0.9), ("min_p", 0.1),
    ("repetition_penalty", 1.1), ("presence_penalty", 0.5), ("frequency_penalty", 0.5), ("seed", 3),
    ("stop_token_ids", (7,)), ("ignore_eos", True), ("logprobs", 2),
])
def test_every_sampling_parameter_changes_the_key(field: str, value: object) -> None:
    changed = dataclasses.replace(BASE, sampling=dataclasses.replace(BASE.sampling, **{field: value}))
    assert _key(changed) != _key()


@pytest.mark.parametrize("field,value", [
    ("stop", ("x",)), ("include_stop_str_in_output", True), ("skip_special_tokens", False),
    ("add_special_tokens", False), ("echo_prompt", True),
])
def test_every_text_option_changes_the_key(field: str, value: object) -> None:
    changed = dataclasses.replace(BASE, options=dataclasses.replace(BASE.options, **{field: value}))
    assert _key(changed) != _key()


def test_model_revision_tenant_and_input_change_the_key() -> None:
    keys = {
        _key(),
        _key(card=ModelCard(id="m", revision="r2")),
        _key(request=dataclasses.replace(BASE, model="n"), card=ModelCard(id="n", revision="r1")),
        _key(tenant=tenant_of("key-a")),
        _key(dataclasses.replace(BASE, prompt="Hi!")),
        _key(GenerationRequest(model="m", sampling=BASE.sampling, token_ids=(1, 2))),
        _key(GenerationRequest(model="m", sampling=BASE.sampling, messages=(ChatTurn("user", "Hi"),))),
        _key(GenerationRequest(model="m", sampling=BASE.sampling, messages=(ChatTurn("user", "Hi"),),
                               add_generation_prompt=False)),
        _key(GenerationRequest(model="m", sampling=BASE.sampling, messages=(ChatTurn("system", "Hi"),))),
        _key(dataclasses.replace(BASE, sampling=dataclasses.replace(BASE.sampling, fill_context=True))),
    }
    assert len(keys) == 10


def test_scheduling_fields_and_the_requested_model_name_leave_the_key_alone() -> None:
    same = dataclasses.replace(BASE, priority=-3, timeout_s=5.0, bypass_cache=True, model="alias")
    assert _key(same) == _key()
    # The key comes from the served card, not from the name the client typed.
    assert result_key(same, CARD, "") == result_key(BASE, CARD, "")
    assert _key(dataclasses.replace(BASE, options=TextOptions())) == _key()


def test_only_greedy_or_seeded_requests_not_bypassing_are_cacheable() -> None:
    assert is_cacheable(BASE)
    sampled = dataclasses.replace(BASE, sampling=SamplingParams(temperature=0.7))
    assert not is_cacheable(sampled)
    assert is_cacheable(dataclasses.replace(BASE, sampling=SamplingParams(temperature=0.7, seed=1)))
    assert is_cacheable(dataclasses.replace(BASE, sampling=SamplingParams(temperature=0.7, top_k=1)))
    assert not is_cacheable(dataclasses.replace(BASE, bypass_cache=True))


def test_tenant_is_a_hash_of_the_key_and_empty_without_keys() -> None:
    assert tenant_of("") == ""
    assert tenant_of("secret") != tenant_of("secret2")
    assert len(tenant_of("secret")) == 32 and "secret" not in tenant_of("secret")
    assert tenant_from_authorization("Bearer secret", True) == tenant_of("secret")
    assert tenant_from_authorization("Bearer secret", False) == ""
    assert tenant_from_authorization(None, True) == ""
