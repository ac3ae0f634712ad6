"""Small random BERT checkpoints with sentence-transformers pooling files, saved by transformers."""

from __future__ import annotations

import json
from pathlib import Path

import torch

POOLING_FLAGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}


def make_bert_folder(folder: Path, pooling: str | None, normalize: bool = False, seed: int = 0) -> Path:
    """A 2-layer BertModel (hidden 64, 4 heads) with random weights; `pooling` None writes no sentence-transformers
    files at all."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=40)
    transformers.BertModel(config).eval().save_pretrained(folder)
    if pooling is not None:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir()
        flags = {flag: mode == pooling for mode, flag in POOLING_FLAGS.items()}
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, **flags}))
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    return folder
