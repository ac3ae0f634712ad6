"""Model folders with trained test tokenizers, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.tokenizer.model_dirs import build_model_dir

STYLES = ("llama3", "chatml", "mistral")


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {style: build_model_dir(root / style, style) for style in STYLES}
