"""`flashstream serve tokenizer`: each option one flag, one FLASHSTREAM_* variable and one config field."""

from __future__ import annotations

import pytest

from services.tokenizer.server import build_config, build_parser
from tests.unit.common.stage_options import (StageOption, check_help_shows_the_default,
                                             check_option_reaches_its_field, expected_flags, option_flags)

OPTIONS = [
    StageOption("--model", "FLASHSTREAM_MODEL", "model_dir", "", ("/env", "/env"), ("/flag", "/flag")),
    StageOption("--scheduler", "FLASHSTREAM_SCHEDULER", "scheduler", "127.0.0.1:50052", ("e:1", "e:1"),
                ("f:2", "f:2")),
    StageOption("--model-id", "FLASHSTREAM_MODEL_ID", "model_id", "", ("env-id", "env-id"), ("flag-id", "flag-id")),
    StageOption("--encode-workers", "FLASHSTREAM_ENCODE_WORKERS", "encode_workers", "2", ("3", 3), ("4", 4)),
]
REQUIRED = {"--model": "/models/m"}


def test_every_tokenizer_flag_beyond_the_server_ones_is_one_of_its_options() -> None:
    assert option_flags(build_parser()) == expected_flags(OPTIONS)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.flag)
def test_each_option_reaches_its_field_from_its_variable_and_from_its_flag_which_wins(option: StageOption) -> None:
    check_option_reaches_its_field(build_config, option, REQUIRED)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.flag)
def test_help_lists_each_option_with_its_default_or_its_variable(option: StageOption) -> None:
    check_help_shows_the_default(build_parser, option)
