"""Where each stage's CPU time goes under load: samples every FlashStream process with py-spy and sorts the samples
into the parts of a step (planning, each gRPC hop, protobuf conversion, forward launch, sampling, waiting on the
device, detokenization, HTTP streaming).

    python -m bench.stage_profile --seconds 20 --out bench/results/serve_profile.md   # while a load runs

Processes are found by their command line (`services.cli serve <stage>`). Each sample is charged to the first
category that matches a frame, walking from the innermost frame out; py-spy leaves idle threads out, so a stage's
share of the wall time is its samples over seconds times rate. Each stage's hottest functions of the project are
listed under it. Needs py-spy (pip install py-spy) and permission to attach to the processes (root, or ptrace
allowed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
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


def stacks(raw: str) -> Iterator[tuple[list[str], int]]:
    """(frames, outermost first; samples) of each line of a py-spy raw (collapsed-stack) file."""
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            yield stack.split(";"), int(n)


def categorise(raw: str) -> tuple[Counter, int]:
    """Samples per category of one py-spy raw (collapsed-stack) file, and the total."""
    counts: Counter = Counter()
    total = 0
    for frames, n in stacks(raw):
        total += n
        for frame in reversed(frames):
            hit = next((name for name, keys in CATEGORIES if any(k in frame for k in keys)), None)
            if hit is not None:
                counts[hit] += n
                break
        else:
            counts["other"] += n
    return counts, total


PROJECT_DIRS = ("services/", "kernels/", "gateway/")  # the project's own code in a frame's file path
HOT_FRAMES = 8  # functions listed per stage


def short_frame(frame: str) -> str:
    """'fn (/any/path/services/worker/runner.py:120)' -> 'fn (services/worker/runner.py)': one name per function,
    whatever the line or the checkout's location."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for top in PROJECT_DIRS:
        if top in path:
            path = top + path.split(top, 1)[1]
            break
    else:
        path = path.rsplit("/", 1)[-1]
    return f"{name} ({path})"


def hot_frames(raw: str, limit: int = HOT_FRAMES) -> list[tuple[str, float]]:
    """The functions of the project most samples were in, each with its share of all samples: a sample goes to its
    innermost project frame, joined by ' > ' to the innermost frame of all when that one is a library's (where the
    time went inside it)."""
    counts: Counter = Counter()
    total = 0
    for frames, n in stacks(raw):
        total += n
        own = next((f for f in reversed(frames) if any(top in f for top in PROJECT_DIRS)), None)
        key = short_frame(frames[-1]) if own is None else short_frame(own)
        if own is not None and own != frames[-1]:
            key += " > " + short_frame(frames[-1])
        counts[key] += n
    return [(key, round(n / total, 3)) for key, n in counts.most_common(limit)] if total else []


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
            raw = out.read_text() if out.exists() else ""
            counts, total = categorise(raw)
            shares = {k: round(v / total, 3) for k, v in counts.most_common()} if total else {}
            report[name] = {"busy": round(total / (seconds * rate), 3), **shares, "hot": hot_frames(raw)}
            if not total:
                report[name]["error"] = err.strip().splitlines()[-1:] or [f"py-spy exited with {proc.returncode}"]
    return report


def to_markdown(report: dict[str, dict], seconds: float) -> str:
    lines = [f"Share of each stage's CPU samples by part of the step ({seconds:.0f} s of py-spy under load). "
             "busy: CPU time over wall time (1.0 = one core all the time).", ""]
    for name, parts in report.items():
        shares = ", ".join(f"{k} {v:.0%}" for k, v in parts.items() if k not in ("busy", "error", "hot"))
        lines.append(f"- **{name}** (busy {parts['busy']:.2f}): {shares or 'no samples'}")
        lines += [f"  - {share:.0%} `{frame}`" for frame, share in parts.get("hot", [])]
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
