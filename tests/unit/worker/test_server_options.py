"""`flashstream serve worker`: each option one flag, one FLASHSTREAM_* variable and one config field."""

from __future__ import annotations

from services.worker.server import build_config, build_parser
from tests.unit.common.stage_options import StageOption, stage_option_tests

OPTIONS = [
    StageOption("--model", "FLASHSTREAM_MODEL", "model", "", ("env-model", "env-model"), ("flag-model", "flag-model")),
    StageOption("--model-id", "FLASHSTREAM_MODEL_ID", "model_id", "", ("env-id", "env-id"), ("flag-id", "flag-id")),
    StageOption("--load-format", "FLASHSTREAM_LOAD_FORMAT", "load_format", "auto", ("dummy", "dummy"),
                ("fake", "fake")),
    StageOption("--dtype", "FLASHSTREAM_DTYPE", "dtype", "auto", ("float16", "float16"), ("bfloat16", "bfloat16")),
    StageOption("--device", "FLASHSTREAM_DEVICE", "device", "auto", ("cpu", "cpu"), ("cuda:1", "cuda:1")),
    StageOption("--quantization", "FLASHSTREAM_QUANTIZATION", "quantization", "", ("fp8", "fp8"), ("", "")),
    StageOption("--quantize-lm-head", "FLASHSTREAM_QUANTIZE_LM_HEAD", "quantize_lm_head", "off"),
    StageOption("--kv-cache-dtype", "FLASHSTREAM_KV_CACHE_DTYPE", "kv_cache_dtype", "auto", ("fp8", "fp8"),
                ("auto", "auto")),
    StageOption("--block-size", "FLASHSTREAM_BLOCK_SIZE", "block_size", "16", ("32", 32), ("64", 64)),
    StageOption("--num-kv-blocks", "FLASHSTREAM_NUM_KV_BLOCKS", "num_kv_blocks", "0", ("100", 100), ("200", 200)),
    StageOption("--gpu-memory-utilization", "FLASHSTREAM_GPU_MEMORY_UTILIZATION", "gpu_memory_utilization", "0.9",
                ("0.5", 0.5), ("0.8", 0.8)),
    StageOption("--max-num-seqs", "FLASHSTREAM_MAX_NUM_SEQS", "max_num_seqs", "1024", ("8", 8), ("16", 16)),
    StageOption("--max-num-batched-tokens", "FLASHSTREAM_MAX_NUM_BATCHED_TOKENS", "max_num_batched_tokens", "8192",
                ("512", 512), ("1024", 1024)),
    StageOption("--max-model-len", "FLASHSTREAM_MAX_MODEL_LEN", "max_model_len", "0", ("1024", 1024),
                ("2048", 2048)),
    StageOption("--enforce-eager", "FLASHSTREAM_ENFORCE_EAGER", "enforce_eager", "off"),
    StageOption("--piecewise-max-tokens", "FLASHSTREAM_PIECEWISE_MAX_TOKENS", "piecewise_max_tokens", "2048",
                ("8192", 8192), ("0", 0)),
    StageOption("--fake-token-id", "FLASHSTREAM_FAKE_TOKEN_ID", "fake_token_id", "-1", ("7", 7), ("8", 8)),
    StageOption("--fake-step-ms", "FLASHSTREAM_FAKE_STEP_MS", "fake_step_ms", "0.0", ("0.5", 0.5), ("2", 2.0)),
    StageOption("--seed", "FLASHSTREAM_SEED", "seed", "0", ("3", 3), ("4", 4)),
    StageOption("--worker-id", "FLASHSTREAM_WORKER_ID", "worker_id", "", ("w1", "w1"), ("w2", "w2")),
    StageOption("--kernel-profile-dir", "FLASHSTREAM_KERNEL_PROFILE_DIR", "kernel_profile_dir", "",
                ("env-dir", "env-dir"), ("flag-dir", "flag-dir")),
    StageOption("--kernel-profile-steps", "FLASHSTREAM_KERNEL_PROFILE_STEPS", "kernel_profile_steps", "100",
                ("10", 10), ("20", 20)),
    StageOption("--tensor-parallel-size", "FLASHSTREAM_TENSOR_PARALLEL_SIZE", "tensor_parallel_size", "1",
                ("2", 2), ("4", 4)),
]
REQUIRED = {"--model": "llama-3.2-1b", "--quantization": "fp8"}  # fp8: --quantize-lm-head needs it


(test_every_flag_beyond_the_server_ones_is_one_of_the_stage_options,
 test_each_option_reaches_its_field_from_its_variable_and_from_its_flag_which_wins,
 test_help_lists_each_option_with_its_default_or_its_variable) = stage_option_tests(build_parser, build_config, OPTIONS,
                                                                                      REQUIRED)
