"""Test model folders: small tokenizers trained on the multilingual fixture text, with chat templates.

Three styles, each a folder with tokenizer.json and tokenizer_config.json as a Hugging Face model ships
them (tokenizer_class PreTrainedTokenizerFast, so transformers loads exactly these files):
- "llama3": byte-level BPE, BOS added by the post-processor, header-style chat template.
- "chatml": byte-level BPE without BOS, <|im_start|>/<|im_end|> template (Qwen2.5 style).
- "mistral": BPE over "▁"-joined words with byte_fallback and a ByteFallback decoder, add_bos_token,
  [INST] template (Mistral / Llama 2 style).
Training takes well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

FIXTURE_TEXT = Path(__file__).resolve().parents[2] / "data" / "tokenizer" / "multilingual.txt"

LLAMA3_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] | trim %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = 'You are a helpful assistant.' %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}\n"
    "{{- 'Today Date: ' + strftime_now('%d %b %Y') + '\\n\\n' }}\n"
    "{{- system_message + '<|eot_id|>' }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if message['role'] == 'system' %}{% continue %}{% endif %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}\n"
    "    {%- if message['content'] is string %}\n"
    "        {{- message['content'] | trim + '<|eot_id|>' }}\n"
    "    {%- else %}\n"
    "        {{- message['content'] | tojson + '<|eot_id|>' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

CHATML_TEMPLATE = (
    "{%- set ns = namespace(has_system=false) %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'system' %}{% set ns.has_system = true %}{% endif %}\n"
    "{%- endfor %}\n"
    "{%- if not ns.has_system %}\n"
    "{{- '<|im_start|>system\\nYou are a careful assistant. Answer briefly.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'tool' %}\n"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content | tojson + '\\n</tool_response><|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "{{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

MISTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('Roles must alternate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.last and system_message is defined %}\n"
    "            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- '[INST] ' + message['content'] + ' [/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- ' ' + message['content'] + eos_token }}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user and assistant roles are supported, with an optional system first') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]


def fixture_lines() -> list[str]:
    return FIXTURE_TEXT.read_text(encoding="utf-8").splitlines()


def _byte_level_tokenizer(specials: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(fixture_lines(), trainer=trainer)
    return tok


def _byte_fallback_tokenizer(specials: list[str], vocab_size: int) -> Tokenizer:
    """A BPE whose vocabulary lacks most CJK and emoji characters, so those come out as <0xNN> byte tokens."""
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], limit_alphabet=120, show_progress=False)
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Replace(" ", "▁")
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    base.train_from_iterator(fixture_lines(), trainer=trainer)
    trained = json.loads(base.to_str())["model"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    ordered = specials[:3] + byte_tokens + sorted(trained["vocab"], key=trained["vocab"].get)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(ordered))}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    tok.add_special_tokens(specials)
    return tok


def _write(folder: Path, tok: Tokenizer, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_max_length": 4096, **config}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
    return folder


def build_model_dir(folder: Path, style: str) -> Path:
    """Writes a tokenizer of the given style ("llama3", "chatml", "mistral") into folder; returns it."""
    if style == "llama3":
        tok = _byte_level_tokenizer(LLAMA3_SPECIALS, 700)
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                          special_tokens=[("<|begin_of_text|>", bos)]),
        ])
        config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE}
    elif style == "chatml":
        tok = _byte_level_tokenizer(CHATML_SPECIALS, 700)
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                  "chat_template": CHATML_TEMPLATE}
    elif style == "mistral":
        tok = _byte_fallback_tokenizer(MISTRAL_SPECIALS, 500)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
        config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                  "add_eos_token": False, "chat_template": MISTRAL_TEMPLATE}
    else:
        raise ValueError(f"unknown tokenizer style {style!r}")
    return _write(folder, tok, config)
