"""A/B of the decode kernels at two versions of kernels/, alternating in one run on one GPU.

    git archive <commit> kernels | tar -x -C DIR      # the baseline's kernels package under DIR
    python3 -m bench.attention.decode_ab --base DIR --json OUT.json [--rounds 3] [--variants JSON]

Each round times every shape with the baseline and then with the working tree's kernels, each in its own process
(the two packages share a name), through the working tree's bench.attention.timing.bench_decode: CUDA-graph replays
over rotating caches, no peers. The baseline's kernels must offer what timing.py calls. Rows report TB/s per round
and the median ratio new / base.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# (batch, context, page size): the two decode goals' shapes on both page sizes, and two that already meet theirs.
SHAPES = [(16, 4096, 16), (16, 4096, 64), (1, 32768, 64), (1, 32768, 16), (64, 4096, 16), (8, 32768, 16),
          (1, 4096, 16), (8, 32768, 64)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# --variants: a JSON list of [batch, context, page size, splits or null, DecodeConfig fields], configs other than the
# default, timed with the working tree's kernels only (after its default rows, in the same process). Each run's
# variants are recorded in its JSON.

_CHILD = """
import json, sys
from bench.attention.timing import bench_decode
shapes = [(b, c, p, None, None) for b, c, p in json.loads(sys.argv[1])] + json.loads(sys.argv[2])
for batch, context, block_size, splits, fields in shapes:
    cfg = None
    if fields is not None:
        from kernels.decode_attention import DecodeConfig
        cfg = DecodeConfig(**fields)
    row = bench_decode(batch, context, splits, cfg, peers=False, block_size=block_size)
    print("ROW " + json.dumps({"batch": batch, "context": context, "block_size": block_size, "num_splits": splits,
                               "config": fields, "tbps": row["ours_tbps"], "rel_err": row["rel_err_vs_sdpa"]}),
          flush=True)
"""


def _run(package_root: str, variants: list) -> list[dict]:
    # The kernels package comes from package_root (first on the path), the benchmark code from this tree.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, ROOT, os.path.join(ROOT, "protos")]))
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(SHAPES), json.dumps(variants)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=package_root)
    if done.returncode != 0:
        raise RuntimeError(f"decode rows from {package_root} failed:\n{done.stderr[-2000:]}")
    return [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("ROW ")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="directory holding the baseline's kernels package")
    parser.add_argument("--json", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="[]", help="JSON list of [batch, context, page, splits, fields]")
    args = parser.parse_args(argv)
    variants = json.loads(args.variants)
    runs: dict[str, list[list[dict]]] = {"base": [], "new": []}
    for _ in range(args.rounds):
        for name, root, extra in (("base", os.path.abspath(args.base), []), ("new", ROOT, variants)):
            runs[name].append(_run(root, extra))
            print(name, [round(r["tbps"], 3) for r in runs[name][-1]], flush=True)
    rows = []
    for i, (batch, context, block_size) in enumerate(SHAPES):
        base = [run[i]["tbps"] for run in runs["base"]]
        new = [run[i]["tbps"] for run in runs["new"]]
        rows.append({"batch": batch, "context": context, "block_size": block_size, "base_tbps": base, "new_tbps": new,
                     "new_rel_err": [run[i]["rel_err"] for run in runs["new"]],
                     "median_ratio": statistics.median(new) / statistics.median(base)})
        print(f"{batch} x {context} page {block_size}: base {statistics.median(base):.3f} new "
              f"{statistics.median(new):.3f} ratio {rows[-1]['median_ratio']:.3f}", flush=True)
    variant_rows = []
    for i, (batch, context, block_size, splits, fields) in enumerate(variants):
        tbps = [run[len(SHAPES) + i]["tbps"] for run in runs["new"]]
        variant_rows.append({"batch": batch, "context": context, "block_size": block_size, "num_splits": splits,
                             "config": fields, "new_tbps": tbps,
                             "new_rel_err": [run[len(SHAPES) + i]["rel_err"] for run in runs["new"]]})
        print(f"variant {batch} x {context} page {block_size} splits {splits} {fields}: "
              f"{statistics.median(tbps):.3f}", flush=True)
    with open(args.json, "w") as fh:
        json.dump({"command": "python3 -m bench.attention.decode_ab " + " ".join(sys.argv[1:] if argv is None else argv),
                   "rows": rows, "variants": variant_rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
