"""Configuration helpers: FLASHSTREAM_* variables typed like their defaults, validated server settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from services.common.config import (ServerConfig, add_options, add_server_args, config_from_args, csv_option,
                                    env_default, on_off_option, option, server_config, split_csv)
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
    with pytest.raises(InvalidArgument) as info:
        env_default("eager", True, {"FLASHSTREAM_EAGER": "maybe"})
    assert info.value.message == ("FLASHSTREAM_EAGER='maybe' is not a valid bool (1 or 0, true or false, yes or no, "
                                  "on or off)")
    assert env_default("eager", True, {"FLASHSTREAM_EAGER": " Off"}) is False


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


@dataclass(frozen=True)
class Example:
    count: int = option(2, "how many")
    names: tuple[str, ...] = csv_option("a,b", "names, comma-separated")
    http_port: int = option(80, "port", env="example_http_port")
    loud: bool = option(False, "say more")
    cache: bool = on_off_option(True, "keep answers", name="example_cache")
    unlisted: str = "not an option"


def example_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_options(parser, Example)
    return parser


def test_each_option_field_becomes_one_flag_and_the_flags_fill_the_config() -> None:
    parser = example_parser()
    assert [action.option_strings for action in parser._actions[1:]] == [
        ["--count"], ["--names"], ["--http-port"], ["--loud", "--no-loud"], ["--example-cache"]]
    assert config_from_args(Example, parser.parse_args([]), unlisted="x") == Example(2, ("a", "b"), 80, False, True,
                                                                                      "x")
    args = parser.parse_args(["--count", "3", "--names", "c, d,e", "--http-port", "81", "--loud",
                              "--example-cache", "off"])
    assert config_from_args(Example, args) == Example(3, ("c", "d", "e"), 81, True, False)


def test_each_option_variable_gives_its_flag_default_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("COUNT", "4"), ("NAMES", "x"), ("EXAMPLE_HTTP_PORT", "82"), ("LOUD", "yes"),
                        ("EXAMPLE_CACHE", "off")):
        monkeypatch.setenv(f"FLASHSTREAM_{name}", value)
    parser = example_parser()
    assert config_from_args(Example, parser.parse_args([])) == Example(4, ("x",), 82, True, False)
    args = parser.parse_args(["--count", "5", "--names", "", "--http-port", "83", "--no-loud", "--example-cache",
                              "on"])
    assert config_from_args(Example, args) == Example(5, (), 83, False, True)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("COUNT", "many", "FLASHSTREAM_COUNT='many' is not a valid int"),
    ("EXAMPLE_CACHE", "yes", "FLASHSTREAM_EXAMPLE_CACHE='yes' is not on or off"),
])
def test_a_variable_that_its_flag_would_refuse_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, name: str,
                                                                     value: str, message: str) -> None:
    monkeypatch.setenv(f"FLASHSTREAM_{name}", value)
    with pytest.raises(InvalidArgument) as info:
        example_parser()
    assert info.value.message == message
