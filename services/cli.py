"""The `flashstream` command: up | serve <stage> | generate | demo-model | internal-certs."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

from services.common.config import new_parser
from services.common.errors import FlashStreamError
from services.stages import STAGE_MAINS

USAGE = """flashstream <command> [options]

commands:
  up                  start the whole stack on this machine (demo model unless --model DIR|PRESET)
  serve STAGE         run one stage: gateway | tokenizer | scheduler | worker
  generate PROMPT     stream a completion from a running gateway
  demo-model          build the demo checkpoint and print its folder
  internal-certs      write a CA and a certificate for mutual TLS between the stages

options:
  -h, --help          show this message
  --version           print the version

`flashstream <command> --help` describes each command's options.
"""


def version() -> str:
    try:
        return importlib.metadata.version("flashstream")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] == "--version":
        print(f"flashstream {version()}")
        return 0
    command, rest = args[0], args[1:]
    if command == "serve":
        if not rest or rest[0] not in STAGE_MAINS:
            print(f"usage: flashstream serve {{{'|'.join(STAGE_MAINS)}}} [options]", file=sys.stderr)
            return 2
        module = importlib.import_module(STAGE_MAINS[rest[0]])
        try:
            return int(module.main(rest[1:]) or 0)
        except FlashStreamError as exc:  # bad flags, model folder or port: one line, not a traceback
            print(f"flashstream serve {rest[0]}: error: {exc.message}", file=sys.stderr)
            return 1
    if command == "up":
        from services.launcher import main as up_main

        return up_main(rest)
    if command == "generate":
        from services.generate_client import main as generate_main

        return generate_main(rest)
    if command == "demo-model":
        return _demo_model(rest)
    if command == "internal-certs":
        return _internal_certs(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def demo_model_parser():  # noqa: ANN201 - argparse.ArgumentParser
    from services.demo import default_demo_dir

    parser = new_parser("flashstream demo-model", "Build the demo checkpoint (if not built yet) and print its folder.")
    parser.add_argument("--out", default=str(default_demo_dir()), help="folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if a build is there")
    return parser


def _demo_model(argv: list[str]) -> int:
    from services.demo import build_demo_model

    args = demo_model_parser().parse_args(argv)
    print(build_demo_model(args.out, force=args.force))
    return 0


def internal_certs_parser():  # noqa: ANN201 - argparse.ArgumentParser
    parser = new_parser(
        "flashstream internal-certs",
        "Write ca.crt, tls.crt and tls.key for mutual TLS between the stages (point every stage's "
        "--internal-tls-dir at the folder, or make a Kubernetes Secret of it) and print the folder. A folder that "
        "holds all three already is kept.")
    parser.add_argument("--out", required=True, help="folder")
    parser.add_argument("--valid-days", type=int, default=365, help="how long the CA and certificate are valid")
    parser.add_argument("--force", action="store_true", help="write new ones even if the folder has them")
    return parser


def _internal_certs(argv: list[str]) -> int:
    from pathlib import Path

    from services.common.internal_tls import CA_FILE, CERT_FILE, KEY_FILE, write_stack_certs

    args = internal_certs_parser().parse_args(argv)
    folder = Path(args.out)
    if args.force or not all((folder / name).is_file() for name in (CA_FILE, CERT_FILE, KEY_FILE)):
        try:
            write_stack_certs(folder, args.valid_days)
        except FlashStreamError as exc:
            print(f"flashstream internal-certs: error: {exc.message}", file=sys.stderr)
            return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
