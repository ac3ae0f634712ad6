"""Structured-output benchmark: the worker's Runner in-process (no gRPC) on dummy weights, decoding a batch
with every row guided by a JSON schema against the same batch unconstrained, in the same run; and the time
to compile a grammar per schema for the model's vocabulary.

Decode is timed per Runner.step (host wall clock), every mode handed the next plan as the scheduler keeps two in
flight, so each step is queued on the device behind the one before: unconstrained greedy and sampled (temperature
1, seeded), guided sampled and greedy (the next step's forward pass is queued at once; its sampling once the host
has read this step's tokens, advanced the matchers and filled the masks, which it does while the device runs that
forward pass), and unconstrained greedy without the next plan (the sequential path, for reference). Beside each
mode, the device's idle time per step (CUDA only): from one step's end to the next step's start, and within a
guided step from its forward pass's end to its sampling's start, the time the device waited for the host. For the
guided modes, the host time of filling the batch's masks at the last step's states, in one batched call and row
by row. With --host-split, each mode then runs as many steps again with every piece of the step timed on the
host (bench/host_split.py): where the host time between a step's forward pass and its sampling goes. The guided
schemas cannot end within the measured steps (arrays with many required items), so every row stays guided
throughout.

--model takes presets or folders, comma-separated, measured in turn. A preset (llama-3.2-1b, llama-3.1-8b) gets a
folder with its config.json and a stand-in tokenizer of the same vocabulary size: a byte-level BPE vocabulary of
128,000 entries (bytes, punctuation runs, numbers and word-like pieces, half with a leading space) plus 256
special tokens, as Llama 3's is laid out. Token masks depend on the vocabulary's strings, so figures with a real
tokenizer may differ somewhat. --num-layers and --hidden-size shrink a preset's model but keep its vocabulary (a
rehearsal on the CPU, where the masks' work is at full size and the model's is not).

    python bench/structured.py --model llama-3.2-1b,llama-3.1-8b --batch 64 --out-name structured_h200
    python bench/structured.py --model llama-3.2-1b --num-layers 2 --hidden-size 256 --dtype float32 --batch 64 \
        --decode-steps 32 --num-compile 3 --out-dir /tmp/structured   # on the CPU
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

from bench.common import RESULTS_DIR, write_results  # noqa: E402
from bench.engine import Bench  # noqa: E402
from bench.host_split import HostSplit  # noqa: E402
from services.common.sampling import Guided, SamplingParams  # noqa: E402
from services.common.step import NewSeq  # noqa: E402
from services.worker.build import build_engine  # noqa: E402
from services.worker.config import WorkerConfig  # noqa: E402
from services.worker.grammar import GrammarCache, GrammarState, bitmask_words, fill_bitmask  # noqa: E402
from services.worker.presets import PRESETS  # noqa: E402

_FIELDS = [
    {"name": {"type": "string"}, "age": {"type": "integer"}, "ok": {"type": "boolean"}},
    {"city": {"type": "string", "maxLength": 20}, "temp": {"type": "number"},
     "sky": {"enum": ["clear", "cloudy", "rain", "snow"]}},
    {"id": {"type": "string", "pattern": "^[a-z]{3}-[0-9]{4}$"}, "tags": {"type": "array", "items": {"type": "string"}},
     "meta": {"type": "object", "properties": {"k": {"type": "string"}, "v": {"type": "integer"}}, "required": ["k"]}},
]


def long_schemas() -> list[str]:
    """Schemas no row can finish within the measured steps: an object holding an array of 500+ records."""
    return [json.dumps({"type": "object", "required": ["rows"], "properties": {"rows": {
        "type": "array", "minItems": 500, "items": {"type": "object", "properties": fields,
                                                     "required": sorted(fields)}}}}) for fields in _FIELDS]


def compile_schemas(n: int) -> list[str]:
    """n distinct small schemas of the shapes clients send (objects, enums, arrays, nesting, bounds)."""
    out = []
    for i in range(n):
        fields = dict(_FIELDS[i % len(_FIELDS)])
        fields[f"extra_{i}"] = [{"type": "integer", "minimum": 0, "maximum": i + 1}, {"enum": [f"v{i}", "other"]},
                                {"type": "array", "items": {"type": "number"}, "maxItems": i % 7 + 1}][i % 3]
        out.append(json.dumps({"type": "object", "properties": fields, "required": sorted(fields)[: i % 4 + 1]}))
    return out


def stand_in_tokenizer(folder: Path, vocab_size: int, eos_id: int) -> None:
    """A byte-level BPE tokenizer of vocab_size ids (the last 256 special), written as a Hugging Face folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    num_plain = vocab_size - 256
    pieces = dict.fromkeys(sorted(byte_chars))
    punct = ['{"', '"}', '":', '",', '":"', '","', "},", "},{", "],", '["', '"]', "[{", "}]", "::", "..", "--"]
    pieces.update(dict.fromkeys(punct))
    pieces.update(dict.fromkeys(str(i) for i in range(1000)))
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "ch"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "io"]
    codas = ["", "n", "r", "s", "t", "l", "nd", "ng", "st", "ck"]
    syllables = [o + v + c for o, v, c in itertools.product(onsets, vowels, codas)]
    for n in (1, 2, 3):
        for combo in itertools.product(syllables, repeat=n):
            word = "".join(combo)
            for form in (word, "Ġ" + word, word.capitalize(), "Ġ" + word.capitalize()):
                pieces[form] = None
                if len(pieces) >= num_plain:
                    break
            if len(pieces) >= num_plain:
                break
        if len(pieces) >= num_plain:
            break
    vocab = {piece: i for i, piece in enumerate(itertools.islice(pieces, num_plain))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [f"<|reserved_special_token_{i}|>" for i in range(256)]
    specials[eos_id - num_plain] = "<|end_of_text|>"
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|end_of_text|>",
              "model_max_length": 131072}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


def model_folder(model: str, work: Path, num_layers: int = 0, hidden_size: int = 0) -> Path:
    """A folder path as given; a preset becomes its config.json plus a stand-in tokenizer, its model shrunk to
    num_layers layers of hidden_size (where given) with the vocabulary kept."""
    if Path(model).is_dir():
        if num_layers or hidden_size:
            raise ValueError("--num-layers and --hidden-size shrink a preset, not a checkpoint folder")
        return Path(model)
    config = dict(PRESETS[model])
    if num_layers:
        config["num_hidden_layers"] = num_layers
    if hidden_size:
        heads = max(1, hidden_size // config["head_dim"])
        config.update(hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_attention_heads=heads,
                      num_key_value_heads=max(1, heads // 4))
    folder = work / model
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    stand_in_tokenizer(folder, config["vocab_size"], config["eos_token_id"])
    return folder


class GuidedBench(Bench):
    """bench.engine's Bench with the sampling of new sequences chosen per call."""

    params: list[SamplingParams]

    def new_seq(self, seq_id: int, prompt_len: int) -> NewSeq:
        return replace(super().new_seq(seq_id, prompt_len), sampling=self.params[seq_id % len(self.params)])


def decode_mode(bench: GuidedBench, params: list[SamplingParams], args: argparse.Namespace, overlap: bool) -> dict:
    bench.params = params
    runner = bench.engine.runner
    ids, _ = bench.prefill(args.batch, args.prompt_len)
    bench.decode(ids, 4, overlap=overlap)  # warm-up
    runner.take_device_idle_s()
    times = bench.decode(ids, args.decode_steps, overlap=overlap)
    idle_s = runner.take_device_idle_s()
    step = statistics.median(times)
    out = {"step_ms": round(step * 1e3, 3), "p90_step_ms": round(sorted(times)[int(0.9 * len(times))] * 1e3, 3),
           "tokens_per_s": round(args.batch / step, 1), "idle_ms_per_step": round(idle_s / len(times) * 1e3, 3)}
    if args.host_split:  # a pass of its own: the timers' cost stays out of the figures above
        with HostSplit() as split:
            bench.decode(ids, args.decode_steps, overlap=overlap)
        out["host_split_ms"] = split.ms_per_step(args.decode_steps)
    states = [runner.table.seqs[i].grammar for i in ids if runner.table.seqs[i].grammar is not None]
    if states:
        out["mask_fill_ms"] = mask_fill_ms(states, bench.engine.info.model.vocab_size)
    bench.finish(ids)
    return out


def mask_fill_ms(states: list[GrammarState], vocab_size: int, repeats: int = 20) -> dict[str, float]:
    """Host time to fill the masks of these matchers (their states left as they are): median over repeats, in
    one batched call and row by row."""
    bitmask = torch.empty((len(states), bitmask_words(vocab_size)), dtype=torch.int32)
    batched, by_row = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        fill_bitmask(states, bitmask)
        batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        for j, state in enumerate(states):
            state.matcher.fill_next_token_bitmask(bitmask, j)
        by_row.append(time.perf_counter() - start)
    return {"batched": round(statistics.median(batched) * 1e3, 3), "by_row": round(statistics.median(by_row) * 1e3, 3)}


def run(args: argparse.Namespace, model: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(model, Path(tmp), args.num_layers, args.hidden_size)
        passes = 3 if args.host_split else 2  # decode passes a mode runs over its sequences (warm-up steps aside)
        config = WorkerConfig(model=str(folder), load_format="dummy", dtype=args.dtype, device=args.device,
                              max_model_len=args.prompt_len + passes * args.decode_steps + 64, max_num_seqs=args.batch,
                              max_num_batched_tokens=max(2048, args.batch * args.prompt_len // 4))
        engine = build_engine(config)
        grammars: GrammarCache = engine.runner.grammars
        start = time.perf_counter()
        grammars.compiler  # noqa: B018 - loads the tokenizer and builds xgrammar's vocabulary index
        out: dict[str, Any] = {"model": model, "vocab_size": engine.info.model.vocab_size, "batch": args.batch,
                               "prompt_len": args.prompt_len, "decode_steps": args.decode_steps,
                               "device": engine.info.device, "dtype": engine.info.dtype,
                               "tokenizer_info_s": round(time.perf_counter() - start, 3)}
        compile_ms = []
        for spec in compile_schemas(args.num_compile):
            start = time.perf_counter()
            grammars.get(Guided("json_schema", spec))
            compile_ms.append((time.perf_counter() - start) * 1e3)
        compile_ms.sort()
        out["compile_ms"] = {"n": len(compile_ms), "median": round(statistics.median(compile_ms), 2),
                             "p90": round(compile_ms[int(0.9 * len(compile_ms))], 2), "max": round(compile_ms[-1], 2)}
        start = time.perf_counter()
        grammars.get(Guided("json_schema", compile_schemas(1)[0]))
        out["cached_lookup_ms"] = round((time.perf_counter() - start) * 1e3, 4)
        print(f"compile per schema: {out['compile_ms']}", flush=True)

        bench = GuidedBench(engine, config.max_model_len)
        guided = [Guided("json_schema", s) for s in long_schemas()]
        # Every mode but the last is handed the next plan, as the scheduler keeps two in flight, so the runner
        # queues each step on the device ahead; the last mode shows the sequential path.
        modes = {
            "unconstrained_greedy": ([SamplingParams(max_tokens=4096, ignore_eos=True)], True),
            "unconstrained_sampled": ([SamplingParams(max_tokens=4096, ignore_eos=True, temperature=1.0, seed=i)
                                       for i in range(args.batch)], True),
            "guided_sampled": ([SamplingParams(max_tokens=4096, temperature=1.0, seed=i, guided=guided[i % 3])
                                for i in range(args.batch)], True),
            "guided_greedy": ([SamplingParams(max_tokens=4096, guided=g) for g in guided], True),
            "unconstrained_greedy_sequential": ([SamplingParams(max_tokens=4096, ignore_eos=True)], False),
        }
        out["decode"] = {}
        for name, (params, overlap) in modes.items():
            out["decode"][name] = decode_mode(bench, params, args, overlap)
            print(f"{name}: {out['decode'][name]}", flush=True)
        d = out["decode"]
        out["guided_sampled_vs_unconstrained_sampled"] = round(
            d["guided_sampled"]["tokens_per_s"] / d["unconstrained_sampled"]["tokens_per_s"], 3)
        out["guided_greedy_vs_unconstrained_greedy"] = round(
            d["guided_greedy"]["tokens_per_s"] / d["unconstrained_greedy"]["tokens_per_s"], 3)
        return out


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"## {r['model']} ({r['dtype']}, {r['device']}), batch {r['batch']}, prompt {r['prompt_len']}, "
             f"{r['decode_steps']} decode steps", "",
             f"Grammar compile per schema ({r['compile_ms']['n']} schemas, vocabulary {r['vocab_size']}): median "
             f"{r['compile_ms']['median']} ms, p90 {r['compile_ms']['p90']} ms, max {r['compile_ms']['max']} ms; "
             f"cached look-up {r['cached_lookup_ms']} ms; tokenizer index built once in {r['tokenizer_info_s']} s.",
             "", "| mode | step ms (median) | p90 | tokens/s | device idle ms per step | mask fill ms: batched | "
             "row by row |", "|---|---|---|---|---|---|---|"]
    for name, m in r["decode"].items():
        fill = m.get("mask_fill_ms", {})
        lines.append(f"| {name} | {m['step_ms']} | {m['p90_step_ms']} | {m['tokens_per_s']} | "
                     f"{m['idle_ms_per_step']} | {fill.get('batched', '-')} | {fill.get('by_row', '-')} |")
    splits = {name: m["host_split_ms"] for name, m in r["decode"].items() if "host_split_ms" in m}
    if splits:
        lines += ["", "Host time per step by piece (ms, own time, a pass of its own; see bench/host_split.py):", ""]
        lines += [f"- {name}: " + ", ".join(f"{piece} {ms}" for piece, ms in split.items()) for name, split in
                  splits.items()]
    lines += ["", f"guided sampled / unconstrained sampled: {r['guided_sampled_vs_unconstrained_sampled']}; "
              f"guided greedy / unconstrained greedy: {r['guided_greedy_vs_unconstrained_greedy']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-3.2-1b",
                        help="presets or checkpoint folders with a tokenizer, comma-separated, each measured in turn")
    parser.add_argument("--num-layers", type=int, default=0, help="shrink a preset to this many layers")
    parser.add_argument("--hidden-size", type=int, default=0, help="shrink a preset to this width")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=128)
    parser.add_argument("--num-compile", type=int, default=30, help="schemas compiled for the compile-time figures")
    parser.add_argument("--host-split", action="store_true",
                        help="after each mode's timed steps, as many again with each piece of the step timed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out-name", default="")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    results = []
    for model in args.model.split(","):
        results.append(run(args, model))
        gc.collect()  # the engine goes before the next model's is built
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    markdown = "\n".join(to_markdown(r) for r in results)
    print(markdown)
    if args.out_name:
        write_results(args.out_name, {"results": results}, markdown, Path(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
