"""The demo checkpoint is deterministic and in Hugging Face layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from services.demo import build_demo_model
from services.demo.build import MODEL_CONFIG


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.timeout(120)
def test_two_builds_give_byte_identical_files(tmp_path: Path) -> None:
    first = build_demo_model(tmp_path / "a")
    second = build_demo_model(tmp_path / "b")
    assert sorted(_digests(first)) == ["config.json", "generation_config.json", "model.safetensors",
                                       "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert _digests(first) == _digests(second)


@pytest.mark.timeout(120)
def test_the_build_loads_in_transformers_with_the_declared_shapes(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_demo_model(tmp_path / "demo")
    config = json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert config["vocab_size"] == len(tokenizer) == model.config.vocab_size == 1024
    assert model.config.num_hidden_layers == MODEL_CONFIG["num_hidden_layers"]
    assert tokenizer("hello").input_ids[0] == tokenizer.bos_token_id == 0
    assert tokenizer.eos_token_id == 1
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_an_existing_complete_build_is_reused_without_rebuilding(tmp_path: Path) -> None:
    folder = build_demo_model(tmp_path / "demo")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert build_demo_model(folder) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
