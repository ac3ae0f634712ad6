"""`flashstream serve gateway`: each option one flag, one FLASHSTREAM_* variable and one config field."""

from __future__ import annotations

import pytest

from gateway.server import build_config, build_parser
from services.common.errors import InvalidArgument
from tests.unit.common.stage_options import StageOption, environment, stage_option_tests

MIB_256 = str(256 * 1024 * 1024)

OPTIONS = [
    StageOption("--tokenizers", "FLASHSTREAM_TOKENIZERS", "tokenizers", "127.0.0.1:50051",
                ("e:1,e:2", ("e:1", "e:2")), ("f:3", ("f:3",))),
    StageOption("--http-port", "FLASHSTREAM_GATEWAY_HTTP_PORT", "http_port", "8000", ("8123", 8123), ("0", 0)),
    StageOption("--api-keys", "FLASHSTREAM_API_KEYS", "api_keys", "", ("k1,k2", ("k1", "k2")), ("k3", ("k3",))),
    StageOption("--open-metrics", "FLASHSTREAM_OPEN_METRICS", "open_metrics", "off"),
    StageOption("--open-reflection", "FLASHSTREAM_OPEN_REFLECTION", "open_reflection", "off"),
    StageOption("--request-timeout-s", "FLASHSTREAM_REQUEST_TIMEOUT_S", "request_timeout_s", "600.0", ("5", 5.0),
                ("7.5", 7.5)),
    StageOption("--reuse-port", "FLASHSTREAM_REUSE_PORT", "reuse_port", "off"),
    StageOption("--max-body-bytes", "FLASHSTREAM_MAX_BODY_BYTES", "max_body_bytes", "4194304", ("2048", 2048),
                ("4096", 4096)),
    StageOption("--tokenizer-service", "FLASHSTREAM_TOKENIZER_SERVICE", "tokenizer_service", "",
                ("tok:1", "tok:1"), ("tok:2", "tok:2")),
    StageOption("--discovery-interval-s", "FLASHSTREAM_DISCOVERY_INTERVAL_S", "discovery_interval_s", "5.0",
                ("2", 2.0), ("3", 3.0)),
    StageOption("--cors-origins", "FLASHSTREAM_CORS_ORIGINS", "cors_origins", "", ("*", ("*",)),
                ("http://a:1,http://b:2", ("http://a:1", "http://b:2"))),
    StageOption("--result-cache", "FLASHSTREAM_RESULT_CACHE", "result_cache.enabled", "on", ("off", False),
                ("on", True)),
    StageOption("--redis-url", "FLASHSTREAM_REDIS_URL", "result_cache.redis_url", "",
                ("redis://e:1/0", "redis://e:1/0"), ("redis://f:2/0", "redis://f:2/0")),
    StageOption("--result-cache-ttl-s", "FLASHSTREAM_RESULT_CACHE_TTL_S", "result_cache.ttl_s", "3600.0",
                ("60", 60.0), ("90", 90.0)),
    StageOption("--redis-timeout-s", "FLASHSTREAM_REDIS_TIMEOUT_S", "result_cache.redis_timeout_s", "0.05",
                ("0.2", 0.2), ("0.3", 0.3)),
    StageOption("--redis-breaker-failures", "FLASHSTREAM_REDIS_BREAKER_FAILURES", "result_cache.breaker_failures",
                "5", ("2", 2), ("3", 3)),
    StageOption("--redis-breaker-cooldown-s", "FLASHSTREAM_REDIS_BREAKER_COOLDOWN_S",
                "result_cache.breaker_cooldown_s", "10.0", ("1", 1.0), ("2", 2.0)),
    StageOption("--result-cache-max-entries", "FLASHSTREAM_RESULT_CACHE_MAX_ENTRIES", "result_cache.max_entries",
                "10000", ("10", 10), ("20", 20)),
    StageOption("--result-cache-max-bytes", "FLASHSTREAM_RESULT_CACHE_MAX_BYTES", "result_cache.max_bytes", MIB_256,
                ("1000", 1000), ("2000", 2000)),
    StageOption("--result-cache-local-ttl-s", "FLASHSTREAM_RESULT_CACHE_LOCAL_TTL_S", "result_cache.local_ttl_s",
                "1.0", ("0", 0.0), ("2.5", 2.5)),
    StageOption("--embedding-cache", "FLASHSTREAM_EMBEDDING_CACHE", "embedding_cache.enabled", "on",
                ("off", False), ("on", True)),
    StageOption("--embedding-cache-ttl-s", "FLASHSTREAM_EMBEDDING_CACHE_TTL_S", "embedding_cache.ttl_s", "86400.0",
                ("40", 40.0), ("50", 50.0)),
    StageOption("--embedding-cache-max-entries", "FLASHSTREAM_EMBEDDING_CACHE_MAX_ENTRIES",
                "embedding_cache.max_entries", "100000", ("10", 10), ("20", 20)),
    StageOption("--embedding-cache-max-bytes", "FLASHSTREAM_EMBEDDING_CACHE_MAX_BYTES", "embedding_cache.max_bytes",
                MIB_256, ("1000", 1000), ("2000", 2000)),
    StageOption("--embedding-cache-local-ttl-s", "FLASHSTREAM_EMBEDDING_CACHE_LOCAL_TTL_S",
                "embedding_cache.local_ttl_s", "60.0", ("0", 0.0), ("30", 30.0)),
]


(test_every_flag_beyond_the_server_ones_is_one_of_the_stage_options,
 test_each_option_reaches_its_field_from_its_variable_and_from_its_flag_which_wins,
 test_help_lists_each_option_with_its_default_or_its_variable) = stage_option_tests(build_parser, build_config, OPTIONS, {})


def test_a_cache_switch_refuses_a_word_other_than_on_or_off_naming_its_flag_or_variable(
        capsys: pytest.CaptureFixture) -> None:
    with environment({}), pytest.raises(SystemExit):
        build_config(["--result-cache", "maybe"])
    assert capsys.readouterr().err.endswith(
        "error: argument --result-cache: invalid choice: 'maybe' (choose from 'on', 'off')\n")
    with environment({"FLASHSTREAM_EMBEDDING_CACHE": "false"}), pytest.raises(InvalidArgument) as info:
        build_parser()
    assert info.value.message == "FLASHSTREAM_EMBEDDING_CACHE='false' is not on or off"


@pytest.mark.parametrize(("argv", "message"), [
    (["--result-cache-ttl-s", "0"], "--result-cache-ttl-s must be positive, got 0.0"),
    (["--redis-breaker-failures", "0"], "--redis-breaker-failures must be at least 1, got 0"),
    (["--redis-url", "http://r:1"], "--redis-url must start with redis://, rediss:// or unix://, got 'http://r:1'"),
    (["--embedding-cache-max-bytes", "0"], "--embedding-cache-max-bytes must be at least 1, got 0"),
    (["--embedding-cache-local-ttl-s", "-1"], "--embedding-cache-local-ttl-s must be 0 or more, got -1.0"),
])
def test_a_cache_limit_out_of_range_is_refused_naming_its_flag(argv: list[str], message: str) -> None:
    with environment({}), pytest.raises(InvalidArgument) as info:
        build_config(argv)
    assert info.value.message == message
