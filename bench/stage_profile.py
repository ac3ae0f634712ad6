"""Where each stage's CPU time goes under load: samples every FlashStream process with py-spy and sorts the samples
into the parts of a step (planning, each gRPC hop, protobuf conversion, forward launch, sampling, waiting on the
device, detokenization, HTTP streaming).

    python -m bench.stage_profile --seconds 20 --out bench/results/serve_profile.md   # while a load runs

Processes are found by their command line (`services.cli serve <stage>`). Each sample is charged to the first
category that matches a frame, walking from the innermost frame out; py-spy leaves idle threads out, so a stage's
share of the wall time is its samples over seconds times rate. Needs py-spy (pip install py-spy) and permission to
attach to the processes (root, or ptrace allowed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

# (category, substrings of a frame "function (file:line)"), checked in order for each frame from the innermost.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("waiting on the device", ("synchronize", "DeviceTokens.outputs", "token_ids_of", "_wait_next")),
    ("sampling", ("services/worker/sampl",)),
    ("forward launch (host)", ("services/worker/models/", "kernels/", "cuda_graphs.py", "model_runner.py",
                               "attention_metadata.py", "torch/")),
    ("step bookkeeping (worker)", ("services/worker/runner.py", "services/worker/sequences.py",
                                   "services/worker/executors.py")),
    ("scheduling", ("services/scheduler/scheduler.py", "services/scheduler/engine.py",
                    "services/scheduler/block_manager.py", "services/scheduler/engine_pool.py",
                    "services/scheduler/sequence.py")),
    ("detokenization", ("services/tokenizer/detokenizer.py", "services/tokenizer/request_state.py",
                        "services/tokenizer/stop_strings.py")),
    ("encoding and chat templates", ("services/tokenizer/intake.py", "services/tokenizer/tokenizer.py",
                                     "chat_template.py", "jinja2/")),
    ("protobuf conversion", ("/pb.py", "pb_convert.py", "_pb2", "google/protobuf")),
    ("gRPC", ("grpc/",)),
    ("HTTP and SSE", ("aiohttp/", "gateway/http_api.py", "gateway/openai_", "json/")),
    ("gateway core and cache", ("gateway/core.py", "gateway/cache/", "gateway/tokenizer_client.py")),
    ("metrics", ("prometheus_client/", "services/common/metrics.py")),
    ("event loop", ("asyncio/", "selectors.py", "concurrent/futures", "threading.py")),
]


def stage_processes(parent: int | None = None) -> dict[str, int]:
    """pid of every running `services.cli serve <stage>` process (children of `parent` only, when given), by stage
    name (numbered when repeated)."""
    found: dict[str, int] = {}
    for proc in sorted(Path("/proc").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0):
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent is not None and ppid != parent:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if "services.cli" in words and "serve" in words:
            stage = words[words.index("serve") + 1]
            name, n = stage, 1
            while name in found:
                n += 1
                name = f"{stage}{n}"
            found[name] = int(proc.name)
    return found


def categorise(raw: str) -> tuple[Counter, int]:
    """Samples per category of one py-spy raw (collapsed-stack) file, and the total."""
    counts: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = stack.split(";")
        for frame in reversed(frames):
            hit = next((name for name, keys in CATEGORIES if any(k in frame for k in keys)), None)
            if hit is not None:
                counts[hit] += int(n)
                break
        else:
            counts["other"] += int(n)
    return counts, total


def profile(seconds: float, rate: int, parent: int | None = None) -> dict[str, dict]:
    """Records every stage at once for `seconds`; returns {stage: {"busy": fraction of one core, category: share}}."""
    procs = stage_processes(parent)
    if not procs:
        raise SystemExit("no `services.cli serve` process is running")
    with tempfile.TemporaryDirectory() as tmp:
        running = {}
        for name, pid in procs.items():
            out = Path(tmp) / f"{name}.txt"
            running[name] = (out, subprocess.Popen(
                ["py-spy", "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", str(rate), "-f", "raw",
                 "-o", str(out), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        report = {}
        for name, (out, proc) in running.items():
            _, err = proc.communicate(timeout=seconds + 60)
            counts, total = categorise(out.read_text() if out.exists() else "")
            shares = {k: round(v / total, 3) for k, v in counts.most_common()} if total else {}
            report[name] = {"busy": round(total / (seconds * rate), 3), **shares}
            if not total:
                report[name]["error"] = err.strip().splitlines()[-1:] or [f"py-spy exited with {proc.returncode}"]
    return report


def to_markdown(report: dict[str, dict], seconds: float) -> str:
    lines = [f"Share of each stage's CPU samples by part of the step ({seconds:.0f} s of py-spy under load). "
             "busy: CPU time over wall time (1.0 = one core all the time).", ""]
    for name, parts in report.items():
        shares = ", ".join(f"{k} {v:.0%}" for k, v in parts.items() if k not in ("busy", "error"))
        lines.append(f"- **{name}** (busy {parts['busy']:.2f}): {shares or 'no samples'}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=50, help="samples per second per process")
    parser.add_argument("--parent", type=int, help="only the stages started by this `flashstream up` process")
    parser.add_argument("--out", type=Path, help="markdown file (a .json beside it)")
    args = parser.parse_args()
    report = profile(args.seconds, args.rate, args.parent)
    text = to_markdown(report, args.seconds)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
