"""The `flashstream` command: up | serve <stage> | generate | demo-model."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each stage's entry point: module with `main(argv) -> int`.
STAGE_MAINS = {
    "gateway": "gateway.server",
    "tokenizer": "services.tokenizer.server",
    "scheduler": "services.scheduler.server",
    "worker": "services.worker.server",
}

USAGE = """flashstream <command> [options]

commands:
  up                  start the whole stack on this machine (demo model unless --model DIR)
  serve STAGE         run one stage: gateway | tokenizer | scheduler | worker
  generate PROMPT     stream a completion from a running gateway
  demo-model          build the demo checkpoint and print its folder

`flashstream <command> --help` describes each command's options.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        if not rest or rest[0] not in STAGE_MAINS:
            print(f"usage: flashstream serve {{{'|'.join(STAGE_MAINS)}}} [options]", file=sys.stderr)
            return 2
        module = importlib.import_module(STAGE_MAINS[rest[0]])
        return int(module.main(rest[1:]) or 0)
    if command == "up":
        from services.launcher import main as up_main

        return up_main(rest)
    if command == "generate":
        from services.generate_client import main as generate_main

        return generate_main(rest)
    if command == "demo-model":
        return _demo_model(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def _demo_model(argv: list[str]) -> int:
    from services.demo import build_demo_model, default_demo_dir

    parser = argparse.ArgumentParser(prog="flashstream demo-model", description="Build the demo checkpoint.")
    parser.add_argument("--out", default=None, help=f"folder (default {default_demo_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if a build is there")
    args = parser.parse_args(argv)
    print(build_demo_model(args.out, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
