"""Structured-output benchmark: the worker's Runner in-process (no gRPC) on dummy weights, decoding a batch
with every row guided by a JSON schema against the same batch unconstrained, in the same run; and the time
to compile a grammar per schema for the model's vocabulary.

Decode is timed per Runner.step (host wall clock: the forward pass, filling the rows' token masks on the host
while the device runs it, copying them over, masking, sampling, reading the tokens back, advancing the
matchers). Modes, each with the next plan known as the scheduler keeps two in flight: unconstrained greedy and
sampled (temperature 1, seeded; their steps are queued on the device ahead), guided sampled and greedy (guided
rows run the sequential path: a mask needs the previous token on the host), and unconstrained greedy without
the next plan (the sequential path, for reference). The guided schemas cannot end
within the measured steps (arrays with many required items), so every row stays guided throughout.

A preset model (--model llama-3.2-1b) gets a folder with its config.json and a stand-in tokenizer of the
same vocabulary size: a byte-level BPE vocabulary of 128,000 entries (bytes, punctuation runs, numbers and
word-like pieces, half with a leading space) plus 256 special tokens, as Llama 3's is laid out. Token masks
depend on the vocabulary's strings, so figures with a real tokenizer may differ somewhat.

    python bench/structured.py --model llama-3.2-1b --batch 64 --out-name structured_h200
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

from bench.common import RESULTS_DIR, write_results  # noqa: E402
from bench.engine import Bench  # noqa: E402
from services.common.sampling import Guided, SamplingParams  # noqa: E402
from services.worker.config import WorkerConfig  # noqa: E402
from services.worker.engine import build_engine  # noqa: E402
from services.worker.grammar import GrammarCache  # noqa: E402
from services.worker.plan import NewSeq  # noqa: E402
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


def model_folder(model: str, work: Path) -> Path:
    """A folder path as given; a preset becomes its config.json plus a stand-in tokenizer."""
    if Path(model).is_dir():
        return Path(model)
    config = PRESETS[model]
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
    ids, _ = bench.prefill(args.batch, args.prompt_len)
    bench.decode(ids, 4, overlap=overlap)  # warm-up
    times = bench.decode(ids, args.decode_steps, overlap=overlap)
    bench.finish(ids)
    step = statistics.median(times)
    return {"step_ms": round(step * 1e3, 3), "p90_step_ms": round(sorted(times)[int(0.9 * len(times))] * 1e3, 3),
            "tokens_per_s": round(args.batch / step, 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(args.model, Path(tmp))
        config = WorkerConfig(model=str(folder), load_format="dummy", dtype=args.dtype, device=args.device,
                              max_model_len=args.prompt_len + 2 * args.decode_steps + 64, max_num_seqs=args.batch,
                              max_num_batched_tokens=max(2048, args.batch * args.prompt_len // 4))
        engine = build_engine(config)
        grammars: GrammarCache = engine.runner.grammars
        start = time.perf_counter()
        grammars.compiler  # noqa: B018 - loads the tokenizer and builds xgrammar's vocabulary index
        out: dict[str, Any] = {"model": args.model, "vocab_size": engine.info.model.vocab_size, "batch": args.batch,
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
        # Every mode is handed the next plan, as the scheduler keeps two in flight; the runner queues a step on
        # the device ahead where it can (not with guided rows), the last mode shows the sequential path.
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
             "", "| mode | step ms (median) | p90 | tokens/s |", "|---|---|---|---|"]
    for name, m in r["decode"].items():
        lines.append(f"| {name} | {m['step_ms']} | {m['p90_step_ms']} | {m['tokens_per_s']} |")
    lines += ["", f"guided sampled / unconstrained sampled: {r['guided_sampled_vs_unconstrained_sampled']}; "
              f"guided greedy / unconstrained greedy: {r['guided_greedy_vs_unconstrained_greedy']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-3.2-1b", help="a preset or a checkpoint folder with a tokenizer")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=128)
    parser.add_argument("--num-compile", type=int, default=30, help="schemas compiled for the compile-time figures")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out-name", default="")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    result = run(args)
    markdown = to_markdown(result)
    print(markdown)
    if args.out_name:
        write_results(args.out_name, {"results": [result]}, markdown, Path(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
