"""The files of a checkpoint folder: its safetensors weights, and the revision hash that names what it serves.

No torch here: fake-mode workers and cache keys need the revision without loading a model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from services.common.errors import InvalidArgument

INDEX_FILE = "model.safetensors.index.json"


def weight_files(folder: str | Path) -> list[Path]:
    """The checkpoint's safetensors files: those of the index, model.safetensors, or every *.safetensors."""
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text()).get("weight_map", {})
        files: dict[str, str] = {}
        for tensor, name in weight_map.items():
            files.setdefault(name, tensor)
        for name, tensor in files.items():
            if not (folder / name).is_file():
                raise InvalidArgument(f"{index}: shard {folder / name} (holding tensor {tensor}) is missing")
        return [folder / name for name in sorted(files)]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    files_found = sorted(folder.glob("*.safetensors"))
    if not files_found:
        raise InvalidArgument(f"{folder}: no model.safetensors, {INDEX_FILE} or *.safetensors file")
    return files_found


# sentence-transformers files that choose the pooling, normalisation and length of a folder's embeddings.
POOLING_FILES = ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json")


def model_revision(folder: str | Path, load_format: str = "auto") -> str:
    """Short hash of config.json, the pooling files present and (real weights) the weight files' names and sizes
    (cheap, no weight bytes read); other load formats are prefixed with their name."""
    folder = Path(folder)
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for name in POOLING_FILES:
        if (folder / name).is_file():
            digest.update(name.encode() + (folder / name).read_bytes())
    if load_format != "auto":
        return f"{load_format}-{digest.hexdigest()[:12]}"
    for path in weight_files(folder):
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:12]
