"""API keys, the gateway configuration and its flags."""

from __future__ import annotations

import pytest

from gateway.auth import ApiKeys
from gateway.config import GatewayConfig
from gateway.server import build_parser, config_from_args
from services.common.errors import InvalidArgument, Unauthenticated


def test_no_keys_lets_everything_through() -> None:
    ApiKeys([]).check(None)
    assert not ApiKeys(["", ""]).enabled


@pytest.mark.parametrize(("header", "message"), [
    (None, "missing API key: send the header 'Authorization: Bearer <key>'"),
    ("Basic abc", "missing API key: send the header 'Authorization: Bearer <key>'"),
    ("Bearer k", "invalid API key"),
    ("Bearer k1x", "invalid API key"),
])
def test_wrong_or_missing_keys_are_unauthenticated(header: str | None, message: str) -> None:
    with pytest.raises(Unauthenticated) as err:
        ApiKeys(["k1", "k2"]).check(header)
    assert err.value.message == message


def test_any_configured_key_is_accepted() -> None:
    keys = ApiKeys(["k1", "k2"])
    keys.check("Bearer k1")
    keys.check("Bearer k2")


def test_flags_build_the_config() -> None:
    args = build_parser().parse_args([
        "--tokenizers", "a:1,b:2", "--http-port", "0", "--api-keys", "x,y", "--request-timeout-s", "5",
        "--max-body-bytes", "2048", "--port", "0", "--drain-timeout-s", "3"])
    config = config_from_args(args)
    assert (config.tokenizers, config.http_port, config.api_keys, config.request_timeout_s, config.max_body_bytes,
            config.server.port, config.server.drain_timeout_s) == (("a:1", "b:2"), 0, ("x", "y"), 5.0, 2048, 0, 3.0)


def test_environment_gives_flag_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHSTREAM_GATEWAY_HTTP_PORT", "8123")
    monkeypatch.setenv("FLASHSTREAM_API_KEYS", "k")
    monkeypatch.setenv("FLASHSTREAM_TOKENIZERS", "t:9")
    config = config_from_args(build_parser().parse_args([]))
    assert (config.http_port, config.api_keys, config.tokenizers) == (8123, ("k",), ("t:9",))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tokenizers": ()}, "at least one tokenizer address is needed (--tokenizers host:port[,...] or "
                         "--tokenizer-service host:port)"),
    ({"tokenizers": (), "tokenizer_service": "tok"}, "tokenizer service must be host:port, got 'tok'"),
    ({"tokenizers": ("a:1",), "discovery_interval_s": 0}, "discovery_interval_s must be positive, got 0"),
    ({"tokenizers": ("nohost",)}, "tokenizer address must be host:port, got 'nohost'"),
    ({"tokenizers": ("a:1",), "request_timeout_s": 0}, "request_timeout_s must be positive, got 0"),
    ({"tokenizers": ("a:1",), "http_port": 70000}, "http_port must be in [0, 65535], got 70000"),
])
def test_a_config_without_tokenizers_or_with_a_bad_address_or_limit_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        GatewayConfig(**kwargs)
    assert err.value.message == message
