"""The options of `flashstream up` and the model folder they name, checked before anything starts."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from services.common.config import env_default, new_parser
from services.common.errors import InvalidArgument


EXAMPLES = """examples:
  flashstream up
      the demo model: build it on first use, start every stage, stream one answer, serve until Ctrl-C
  flashstream up --base-port 0 --http-port 0 --exit-after-prompt
      free ports everywhere; stop after the first answer
  flashstream up --model /path/to/Llama-3.2-1B-Instruct --model-id llama-3.2-1b --device cuda
      a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json)
  flashstream up --model qwen2.5-0.5b --load-format dummy --prompt ''
      a preset: random weights of the real shapes and a tokenizer padded to its vocabulary
  flashstream up --num-workers 2 --worker-args '--max-num-seqs 64' --scheduler-args '--max-queued-requests 100'
      two data-parallel workers; flags passed through to every process of a stage
  flashstream up --dry-run
      check ports, model folder and flags, print each stage's command line, start nothing
"""

# Flags each stage accepts, shown in --help as examples of --<stage>-args.
STAGE_ARGS_EXAMPLES = {
    "worker": "--max-num-seqs 64",
    "scheduler": "--max-queued-requests 100",
    "tokenizer": "--encode-workers 4",
    "gateway": "--api-keys KEY1,KEY2",
}


def build_parser() -> argparse.ArgumentParser:
    from services.worker.presets import PRESETS

    parser = new_parser("flashstream up", "Start the whole stack on this machine: every stage as a child process, "
                        "each once the one it dials reports SERVING.", EXAMPLES)
    parser.add_argument("--model", default=env_default("model", ""),
                        help=f"Hugging Face checkpoint folder, or a preset for --load-format dummy|fake "
                             f"({', '.join(PRESETS)}); '': the demo model, built on first use")
    parser.add_argument("--model-id", default=env_default("model_id", ""),
                        help="name clients use for the model ('': the folder or preset name)")
    parser.add_argument("--embedding-model", default=env_default("embedding_model", ""),
                        help="also serve this embedding model folder (e.g. a sentence-transformers BERT) on its own "
                             "worker, scheduler and tokenizer")
    parser.add_argument("--embedding-model-id", default=env_default("embedding_model_id", ""),
                        help="name clients use for the embedding model (default: its folder name)")
    parser.add_argument("--host", default=env_default("host", "127.0.0.1"), help="address every stage listens on")
    parser.add_argument("--base-port", type=int, default=env_default("base_port", 50050),
                        help="gateway gRPC port; tokenizer +1, scheduler +2, worker i +3+i, more tokenizers after "
                             "the workers, status ports +100 (0: free ports)")
    parser.add_argument("--http-port", type=int, default=env_default("gateway_http_port", 8000),
                        help="the gateway's OpenAI-compatible HTTP API and /metrics, /health, /ready (0: a free "
                             "port)")
    parser.add_argument("--num-workers", type=int, default=env_default("num_workers", 1),
                        help="data-parallel workers, each with its own KV cache")
    parser.add_argument("--num-gateways", type=int, default=env_default("num_gateways", 0),
                        help="gateway processes sharing the public ports (0: one per 4 CPU cores, at most 4)")
    parser.add_argument("--num-tokenizers", type=int, default=env_default("num_tokenizers", 0),
                        help="tokenizer processes (0: one per 8 CPU cores, at most 2)")
    parser.add_argument("--device", default=env_default("device", "auto"), help="auto, cpu or cuda")
    parser.add_argument("--load-format", default=env_default("load_format", "auto"),
                        choices=["auto", "dummy", "fake"],
                        help="auto: the folder's safetensors; dummy: random weights of the real shapes; fake: no "
                             "model, a fixed token")
    for stage, example in STAGE_ARGS_EXAMPLES.items():
        parser.add_argument(f"--{stage}-args", default="",
                            help=f"extra flags for every {stage}, e.g. '{example}' (see flashstream serve {stage} "
                                 f"--help)")
    parser.add_argument("--no-internal-tls", dest="internal_tls", action="store_false",
                        help="plaintext between the stages (the internal token is still required); by default they "
                             "use mutual TLS with a CA and certificate made for the run, or those in "
                             "FLASHSTREAM_INTERNAL_TLS_DIR")
    parser.add_argument("--ready-timeout-s", type=float, default=600.0,
                        help="how long each stage may take to report SERVING")
    parser.add_argument("--log-dir", default=None, help="write each stage's output to DIR/<stage>.log")
    parser.add_argument("--prompt", default="Once upon a time",
                        help="stream one answer to this prompt once the stack is up ('' to skip)")
    parser.add_argument("--max-tokens", type=int, default=32, help="length of that answer")
    parser.add_argument("--exit-after-prompt", action="store_true", help="stop the stack after the first answer")
    parser.add_argument("--dry-run", action="store_true",
                        help="check ports, model and flags and print each stage's command line; start nothing")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.num_workers < 1:
        parser.error("--num-workers must be at least 1")
    for name in ("num_gateways", "num_tokenizers"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 (automatic) or more")
    # One Python process serves one core: past a few thousand streamed tokens per second the gateway (SSE) and the
    # tokenizer (detokenization) need more processes than one, where there are cores for them.
    cores = os.cpu_count() or 1
    args.num_gateways = args.num_gateways or max(1, min(4, cores // 4))
    args.num_tokenizers = args.num_tokenizers or max(1, min(2, cores // 8))
    return args


def resolve_model(args: argparse.Namespace) -> str:
    """The model folder every stage gets, checked before anything starts (one line per problem): the demo build,
    a preset's folder, or a checkpoint folder with config.json, tokenizer.json and, to load, safetensors."""
    from services.demo import DEMO_MODEL_ID, build_demo_model, demo_model_is_built
    from services.demo.preset_folder import build_preset_folder, preset_folder_is_built
    from services.worker.presets import PRESETS

    if not args.model:
        if not demo_model_is_built():
            print("building the demo model (first run only) ...", flush=True)
        args.model_id = args.model_id or DEMO_MODEL_ID
        return str(build_demo_model())
    folder = Path(args.model).expanduser()
    if args.model in PRESETS and not folder.exists():
        if args.load_format == "auto":
            raise InvalidArgument(f"preset {args.model!r} has no weights: add --load-format dummy (random weights "
                                  "of its real shapes) or fake")
        if not preset_folder_is_built(args.model):
            print(f"building the {args.model} preset folder (config and padded tokenizer, first run only) ...",
                  flush=True)
        args.model_id = args.model_id or args.model
        return str(build_preset_folder(args.model))
    if not folder.is_dir():
        raise InvalidArgument(f"--model {args.model!r} is neither a folder nor a preset ({', '.join(PRESETS)})")
    missing = [name for name in ("config.json", "tokenizer.json") if not (folder / name).is_file()]
    if args.load_format == "auto" and not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors (or use --load-format dummy)")
    if missing:
        raise InvalidArgument(f"model folder {folder.resolve()} lacks {', '.join(missing)}")
    return str(folder.resolve())
