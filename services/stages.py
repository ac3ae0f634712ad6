"""The four stages by name, and where each one's entry point lives (`main(argv) -> int`, `build_parser()`)."""

from __future__ import annotations

import argparse
import importlib

STAGE_MAINS = {
    "gateway": "gateway.server",
    "tokenizer": "services.tokenizer.server",
    "scheduler": "services.scheduler.server",
    "worker": "services.worker.server",
}


def stage_parser(stage: str) -> argparse.ArgumentParser:
    """The argument parser of `flashstream serve STAGE`."""
    return importlib.import_module(STAGE_MAINS[stage]).build_parser()
