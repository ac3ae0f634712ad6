"""Checkpoint folders of real model shapes (for --load-format dummy) and the request sets of the serving benchmark.

The folder holds the preset's config.json and a byte-level BPE tokenizer trained on the demo corpus, padded with
added tokens up to the model's vocabulary so that every id the model can emit decodes to text.

ShareGPT-like lengths: input and output lengths are each drawn from a log-normal whose mean and standard deviation
are those of the ShareGPT conversations as commonly benchmarked (input 297 +- 167, output 276 +- 134 tokens), clipped
to [SHAREGPT_MIN, SHAREGPT_MAX_IN/OUT]. Drawn with numpy's PCG64 from the seed, so one seed is one request set.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.worker.presets import PRESETS

CORPUS = Path(__file__).resolve().parent.parent / "services" / "demo" / "corpus.txt"
BPE_VOCAB = 4096  # trained merges; the rest of the model's vocabulary is added tokens
# Each turn's content on its own line, as Llama 3's template puts it after its header: a generation prompt that
# ended in a space would be one token there and merge with the answer's first character once the answer is part
# of the next request's history, so a conversation's next request would miss the prefix cache from that point.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:\n{% endif %}")
SHAREGPT_IN = (297.0, 167.0)
SHAREGPT_OUT = (276.0, 134.0)
SHAREGPT_MIN = 4
SHAREGPT_MAX_IN = 1024
SHAREGPT_MAX_OUT = 1024


def make_model(preset: str, out: Path) -> Path:
    """Writes config.json, tokenizer.json and tokenizer_config.json of `preset` into `out`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    config = PRESETS[preset]
    vocab, bos, eos = config["vocab_size"], config["bos_token_id"], config["eos_token_id"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS.read_text().splitlines(), trainer)
    specials = {bos: "<|begin_of_text|>", eos: "<|end_of_text|>"}
    tok = _tokenizer_with_ids(tok, specials, vocab)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**config, "model_type": _model_type(config)}, indent=1))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[bos], "eos_token": specials[eos],
        "chat_template": CHAT_TEMPLATE, "model_max_length": config["max_position_embeddings"]}, indent=1))
    return out


def _tokenizer_with_ids(trained, specials: dict[int, str], vocab: int):
    """A fresh tokenizer from the trained BPE whose added tokens sit at exactly ids base..vocab-1."""
    from tokenizers import Tokenizer

    data = json.loads(trained.to_str())
    base = len(data["model"]["vocab"])
    data["added_tokens"] = [
        {"id": i, "content": specials.get(i, f"<|extra_{i}|>"), "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": i in specials} for i in range(base, vocab)]
    tok = Tokenizer.from_str(json.dumps(data))
    if tok.get_vocab_size() != vocab:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} ids, wanted {vocab}")
    return tok


def _model_type(config: dict) -> str:
    return "qwen2" if config["architectures"][0].startswith("Qwen2") else "llama"


@dataclass(frozen=True)
class RequestSpec:
    prompt: str
    input_len: int
    output_len: int


def sharegpt_lengths(n: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.Generator(np.random.PCG64(seed))

    def draw(mean_std: tuple[float, float], hi: int) -> np.ndarray:
        mean, std = mean_std
        sigma2 = math.log(1 + (std / mean) ** 2)
        values = rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), n)
        return np.clip(np.rint(values), SHAREGPT_MIN, hi).astype(int)

    ins, outs = draw(SHAREGPT_IN, SHAREGPT_MAX_IN), draw(SHAREGPT_OUT, SHAREGPT_MAX_OUT)
    return [(int(a), int(b)) for a, b in zip(ins, outs)]


class PromptMaker:
    """Texts of words that the model folder's tokenizer encodes to exactly the wanted number of tokens."""

    def __init__(self, model_dir: Path, seed: int) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        words = sorted({w for w in CORPUS.read_text().split() if w.isalpha()})
        self.words = words
        self.rng = np.random.Generator(np.random.PCG64(seed + 1))

    def prompt(self, n: int) -> str:
        if n < 1:
            raise ValueError(f"prompt length must be at least 1, got {n}")
        picks = self.rng.integers(0, len(self.words), n + 8)
        ids = self.tok.encode(" ".join(self.words[i] for i in picks), add_special_tokens=False).ids
        while len(ids) < n:
            ids += self.tok.encode(" " + self.words[int(self.rng.integers(len(self.words)))],
                                   add_special_tokens=False).ids
        text = self.tok.decode(ids[:n])
        for _ in range(16):  # a cut inside a merge can re-encode differently: pad with single letters
            got = len(self.tok.encode(text, add_special_tokens=False).ids)
            if got == n:
                return text
            text = text[:-1] if got > n else text + " a"
        raise RuntimeError(f"could not build a prompt of exactly {n} tokens")

    def token_count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)


def request_set(model_dir: Path, num: int, seed: int, dataset: str, input_len: int = 0,
                output_len: int = 0) -> list[RequestSpec]:
    """`num` requests: dataset 'fixed' (input_len/output_len) or 'sharegpt' (the distribution above)."""
    if dataset == "fixed":
        lengths = [(input_len, output_len)] * num
    elif dataset == "sharegpt":
        lengths = sharegpt_lengths(num, seed)
    else:
        raise SystemExit(f"unknown dataset {dataset!r} (fixed or sharegpt)")
    maker = PromptMaker(model_dir, seed)
    # A fresh random text per request: no prefix cache hits between requests.
    return [RequestSpec(maker.prompt(a), a, b) for a, b in lengths]
