"""Builds the demo checkpoint folder in Hugging Face layout (config.json, model.safetensors, tokenizer files)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from services.common.progress import Progress

DEMO_MODEL_ID = "flashstream-demo"
# Bump when the recipe changes, so cached builds of an older recipe are not reused.
DEMO_VERSION = 1

SPECIAL_TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
BOS, EOS = "<s>", "</s>"

# ChatML-style template, rendered by the tokenizer stage with sandboxed Jinja2.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MODEL_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "torch_dtype": "float32",
    "bos_token_id": 0,
    "eos_token_id": 1,
}
VOCAB_SIZE = 1024
WEIGHT_SEED = 20261124


def default_demo_dir() -> Path:
    """Where `flashstream up` keeps the demo build: $FLASHSTREAM_CACHE_DIR or ~/.cache/flashstream."""
    root = os.environ.get("FLASHSTREAM_CACHE_DIR") or os.path.join(Path.home(), ".cache", "flashstream")
    return Path(root) / f"demo-model-v{DEMO_VERSION}"


def train_demo_tokenizer(out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = (Path(__file__).parent / "corpus.txt").read_text(encoding="utf-8").splitlines()
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": True,
        "model_max_length": MODEL_CONFIG["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
        "additional_special_tokens": SPECIAL_TOKENS[2:],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS}, indent=2, sort_keys=True) + "\n"
    )
    return tokenizer.get_vocab_size()


def _write_weights(out: Path, vocab_size: int) -> None:
    import torch
    from safetensors.torch import save_file

    c = MODEL_CONFIG
    hidden, inter, head_dim = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q_size = c["num_attention_heads"] * head_dim
    kv_size = c["num_key_value_heads"] * head_dim
    gen = torch.Generator().manual_seed(WEIGHT_SEED)

    def normal(*shape: int, std: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float32) * std

    tensors = {"model.embed_tokens.weight": normal(vocab_size, hidden, std=0.5)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = torch.ones(hidden)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
        tensors[p + "self_attn.q_proj.weight"] = normal(q_size, hidden, std=0.2)
        tensors[p + "self_attn.k_proj.weight"] = normal(kv_size, hidden, std=0.2)
        tensors[p + "self_attn.v_proj.weight"] = normal(kv_size, hidden, std=0.2)
        tensors[p + "self_attn.o_proj.weight"] = normal(hidden, q_size, std=0.1)
        tensors[p + "mlp.gate_proj.weight"] = normal(inter, hidden, std=0.1)
        tensors[p + "mlp.up_proj.weight"] = normal(inter, hidden, std=0.1)
        tensors[p + "mlp.down_proj.weight"] = normal(hidden, inter, std=0.1)
    tensors["model.norm.weight"] = torch.ones(hidden)
    tensors["lm_head.weight"] = normal(vocab_size, hidden, std=0.5)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def demo_model_is_built(out_dir: Path | str | None = None) -> bool:
    """Whether a complete demo build is in out_dir (default: `default_demo_dir()`)."""
    out = Path(out_dir) if out_dir is not None else default_demo_dir()
    return (out / "model.safetensors").is_file()


def build_demo_model(out_dir: Path | str | None = None, force: bool = False) -> Path:
    """Builds the demo checkpoint into out_dir (default: `default_demo_dir()`) unless a complete build is there.

    The build goes to a temporary sibling folder and is renamed into place, so an interrupted build never
    leaves a half-written checkpoint that a later start would trust.
    """
    out = Path(out_dir) if out_dir is not None else default_demo_dir()
    if demo_model_is_built(out) and not force:
        return out

    def fill(tmp: Path) -> None:
        with Progress(3, "building the demo model", "step") as progress:
            vocab_size = train_demo_tokenizer(tmp)
            progress.advance()
            config = dict(MODEL_CONFIG, vocab_size=vocab_size)
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            (tmp / "generation_config.json").write_text(
                json.dumps({"bos_token_id": 0, "eos_token_id": 1}, indent=2, sort_keys=True) + "\n"
            )
            progress.advance()
            _write_weights(tmp, vocab_size)
            progress.advance()

    return build_folder(out, fill)


def build_folder(out: Path, fill: Callable[[Path], None]) -> Path:
    """Runs fill on a temporary sibling folder and renames it into place, so an interrupted build never leaves a
    half-written folder that a later start would trust."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
