"""Configuration helpers: FLASHSTREAM_* variables typed like their defaults, validated server settings."""

from __future__ import annotations

import argparse

import pytest

from services.common.config import ServerConfig, add_server_args, env_default, server_config, split_csv
from services.common.errors import InvalidArgument


def test_env_default_converts_to_the_type_of_the_default() -> None:
    env = {"FLASHSTREAM_PORT": "7001", "FLASHSTREAM_RATIO": "0.5", "FLASHSTREAM_EAGER": "true",
           "FLASHSTREAM_NAME": "x"}
    assert env_default("port", 1, env) == 7001
    assert env_default("ratio", 0.9, env) == 0.5
    assert env_default("eager", False, env) is True
    assert env_default("name", "y", env) == "x"
    assert env_default("missing", 3, env) == 3


def test_env_default_refuses_a_value_of_the_wrong_type_naming_the_variable() -> None:
    with pytest.raises(InvalidArgument) as info:
        env_default("port", 1, {"FLASHSTREAM_PORT": "eighty"})
    assert info.value.message == "FLASHSTREAM_PORT='eighty' is not a valid int"


def test_server_flags_take_their_defaults_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHSTREAM_SCHEDULER_PORT", "6123")
    parser = argparse.ArgumentParser()
    add_server_args(parser, "scheduler")
    config = server_config(parser.parse_args([]))
    assert (config.port, config.status_port, config.address) == (6123, 50152, "127.0.0.1:6123")
    assert server_config(parser.parse_args(["--port", "0"])).port == 0


def test_server_config_refuses_impossible_ports() -> None:
    with pytest.raises(InvalidArgument) as info:
        ServerConfig(port=70000)
    assert info.value.message == "port must be in [0, 65535], got 70000"


def test_split_csv_flattens_repeated_and_comma_separated_values() -> None:
    assert split_csv(["a:1,b:2", " c:3 "]) == ["a:1", "b:2", "c:3"]
    assert split_csv("") == []
