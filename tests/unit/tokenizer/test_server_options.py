"""`flashstream serve tokenizer`: each option one flag, one FLASHSTREAM_* variable and one config field."""

from __future__ import annotations

from services.tokenizer.server import build_config, build_parser
from tests.unit.common.stage_options import StageOption, stage_option_tests

OPTIONS = [
    StageOption("--model", "FLASHSTREAM_MODEL", "model_dir", "", ("/env", "/env"), ("/flag", "/flag")),
    StageOption("--scheduler", "FLASHSTREAM_SCHEDULER", "scheduler", "127.0.0.1:50052", ("e:1", "e:1"),
                ("f:2", "f:2")),
    StageOption("--model-id", "FLASHSTREAM_MODEL_ID", "model_id", "", ("env-id", "env-id"), ("flag-id", "flag-id")),
    StageOption("--encode-workers", "FLASHSTREAM_ENCODE_WORKERS", "encode_workers", "2", ("3", 3), ("4", 4)),
]
REQUIRED = {"--model": "/models/m"}


(test_every_flag_beyond_the_server_ones_is_one_of_the_stage_options,
 test_each_option_reaches_its_field_from_its_variable_and_from_its_flag_which_wins,
 test_help_lists_each_option_with_its_default_or_its_variable) = stage_option_tests(build_parser, build_config, OPTIONS,
                                                                                      REQUIRED)
