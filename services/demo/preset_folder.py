"""A model folder for a preset (`--model llama-3.2-1b --load-format dummy`): the preset's config.json and a
tokenizer that covers its whole vocabulary, so every stage, the tokenizer included, runs on it.

The tokenizer is the demo model's byte-level BPE, padded with plain added tokens up to the preset's vocabulary
size; the preset's BOS and EOS ids become its BOS and EOS tokens. Random weights make the text meaningless, but
every sampled id decodes to text and the sequence lengths, vocabulary and stop ids are the real model's.
"""

from __future__ import annotations

import json
from pathlib import Path

from services.common.errors import InvalidArgument

# Bump when the recipe changes, so older builds are not reused.
PRESET_FOLDER_VERSION = 1


def preset_folder(name: str) -> Path:
    """Where the folder of preset `name` lives: beside the demo build."""
    from services.demo.build import default_demo_dir

    return default_demo_dir().parent / f"preset-{name}-v{PRESET_FOLDER_VERSION}"


def preset_folder_is_built(name: str) -> bool:
    return (preset_folder(name) / "tokenizer.json").is_file()


def build_preset_folder(name: str) -> Path:
    """Builds the folder of preset `name` unless it is there; written aside and renamed into place."""
    from tokenizers import AddedToken, Tokenizer

    from services.demo.build import train_demo_tokenizer, build_folder
    from services.worker.presets import PRESETS

    if name not in PRESETS:
        raise InvalidArgument(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    out = preset_folder(name)
    if preset_folder_is_built(name):
        return out
    config = PRESETS[name]
    vocab_size, bos_id, eos_id = config["vocab_size"], config["bos_token_id"], config["eos_token_id"]

    def fill(tmp: Path) -> None:
        base_vocab = train_demo_tokenizer(tmp)
        raw = json.loads((tmp / "tokenizer.json").read_text(encoding="utf-8"))
        raw["post_processor"] = None  # BOS comes from tokenizer_config.json's add_bos_token instead
        tokenizer = Tokenizer.from_str(json.dumps(raw))
        tokenizer.add_tokens([AddedToken(f"<|fill_{i}|>", special=False, normalized=False)
                              for i in range(base_vocab, vocab_size)])
        tokenizer.save(str(tmp / "tokenizer.json"))
        tok_config = json.loads((tmp / "tokenizer_config.json").read_text(encoding="utf-8"))
        tok_config.update(bos_token=tokenizer.id_to_token(bos_id), eos_token=tokenizer.id_to_token(eos_id),
                          add_bos_token=bos_id != eos_id,  # Qwen's BOS id is its EOS, and it adds none
                          model_max_length=config["max_position_embeddings"])
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")
        (tmp / "special_tokens_map.json").unlink(missing_ok=True)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    return build_folder(out, fill)
