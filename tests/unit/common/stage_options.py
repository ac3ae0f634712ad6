"""What each stage's option tests check: every option is one flag, one FLASHSTREAM_* variable and one config field;
the variable gives the flag's default, the flag wins over it, and --help prints each with its default."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest

# ServerConfig's options and the ports, which every stage shares (tests/unit/common/test_config.py covers them).
SERVER_FLAGS = frozenset({"-h", "--help", "--port", "--status-port", "--internal-token", "--host", "--log-level",
                          "--drain-timeout-s", "--internal-tls-dir", "--otlp-endpoint"})


@dataclass(frozen=True)
class StageOption:
    """One option as users, manifests and `flashstream up` spell it, with two values of it other than the default
    (a switch: its variable turns it on, --no-<flag> off)."""

    flag: str
    variable: str
    field: str  # dotted path in the stage's config
    default: str  # as --help prints it
    from_variable: tuple[str, Any] = ("1", True)  # text of the variable, and the field's value then
    from_flag: tuple[str, Any] | None = None  # text of the flag, and the field's value then; None: a switch

    def flag_argv(self) -> list[str]:
        """The flag with a value that differs from the variable's."""
        if self.from_flag is None:
            return [f"--no-{self.flag.removeprefix('--')}"]
        return [self.flag, self.from_flag[0]]

    @property
    def flag_value(self) -> Any:
        return False if self.from_flag is None else self.from_flag[1]


@contextlib.contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """Exactly these FLASHSTREAM_* variables, whatever the test process has."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSTREAM_")}
    with mock.patch.dict(os.environ, {**kept, **variables}, clear=True):
        yield


def option_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The parser's flags beyond the shared server ones."""
    return {flag for action in parser._actions for flag in action.option_strings} - SERVER_FLAGS


def expected_flags(options: list[StageOption]) -> set[str]:
    return ({option.flag for option in options}
            | {f"--no-{option.flag.removeprefix('--')}" for option in options if option.from_flag is None})


def field_of(config: Any, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), config)


def check_option_reaches_its_field(build_config: Callable[[list[str]], Any], option: StageOption,
                                   required: dict[str, str]) -> None:
    """The variable alone, the flag alone and both (the flag wins) set the option's field; `required`: flags the
    stage cannot start without, given unless they are the option under test."""
    base = [text for flag, value in required.items() if flag != option.flag for text in (flag, value)]
    text, from_variable = option.from_variable
    assert text != option.default and from_variable != option.flag_value, "samples that tell the sources apart"
    with environment({}):
        assert field_of(build_config(base + option.flag_argv()), option.field) == option.flag_value
        if option.from_flag is None:
            assert field_of(build_config(base + [option.flag]), option.field) is True
    with environment({option.variable: text}):
        assert field_of(build_config(base), option.field) == from_variable
        assert field_of(build_config(base + option.flag_argv()), option.field) == option.flag_value


def help_entries(parser: argparse.ArgumentParser) -> dict[str, str]:
    """First flag of each option → its help entry on one line (flags, metavar, text and default)."""
    with mock.patch.dict(os.environ, {"COLUMNS": "1000"}):
        text = parser.format_help()
    entries: dict[str, str] = {}
    lines: list[str] = []
    for line in text.splitlines() + [""]:
        if line.startswith("  ") and not line.startswith("  -") and lines:
            lines.append(line.strip())
            continue
        if lines:
            entries[lines[0].split()[0].rstrip(",")] = " ".join(lines)
        lines = [line.strip()] if line.startswith("  -") else []
    return entries


def check_help_shows_the_default(build_parser: Callable[[], argparse.ArgumentParser], option: StageOption) -> None:
    """--help lists the option with its default, and with the variable's value when that is set (a switch: on or
    off as the variable sets it)."""
    with environment({}):
        entry = help_entries(build_parser())[option.flag]
    assert entry.endswith(f"(default: {option.default})"), entry
    text = option.from_variable[0]
    with environment({option.variable: text}):
        entry = help_entries(build_parser())[option.flag]
    switch_state = "on" if option.from_variable[1] else "off"
    assert entry.endswith(f"(default: {switch_state if option.from_flag is None else text})"), entry


def stage_option_tests(build_parser: Callable[[], argparse.ArgumentParser], build_config: Callable[[list[str]], Any],
                       options: list[StageOption], required: dict[str, str]) -> tuple[Callable[..., None], ...]:
    """The three tests of one stage's options, for its test module to bind to test_* names; `required`: flags the
    stage cannot start without."""

    def test_every_flag_beyond_the_server_ones_is_one_of_the_stage_options() -> None:
        assert option_flags(build_parser()) == expected_flags(options)

    @pytest.mark.parametrize("option", options, ids=lambda o: o.flag)
    def test_each_option_reaches_its_field_from_its_variable_and_from_its_flag_which_wins(
            option: StageOption) -> None:
        check_option_reaches_its_field(build_config, option, required)

    @pytest.mark.parametrize("option", options, ids=lambda o: o.flag)
    def test_help_lists_each_option_with_its_default_or_its_variable(option: StageOption) -> None:
        check_help_shows_the_default(build_parser, option)

    return (test_every_flag_beyond_the_server_ones_is_one_of_the_stage_options,
            test_each_option_reaches_its_field_from_its_variable_and_from_its_flag_which_wins,
            test_help_lists_each_option_with_its_default_or_its_variable)
