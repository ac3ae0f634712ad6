"""The model's tokenizer as a plain object: encode, decode, chat rendering, special tokens.

Built from a Hugging Face model folder: `tokenizer.json` (the `tokenizers` pipeline) plus
`tokenizer_config.json` (named special tokens, add_bos_token / add_eos_token, chat template) and,
when present, `generation_config.json` (extra end-of-sequence ids). The result encodes and decodes as
transformers' PreTrainedTokenizerFast loaded from the same folder does, without importing transformers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, processors

from services.common.errors import InvalidArgument, NotFound
from services.tokenizer.chat_template import ChatTemplate
from services.tokenizer.tools import tool_call_format

# Named special tokens, in transformers' order; they are the template variables bos_token, eos_token, ...
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _token_content(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or a serialized AddedToken."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise InvalidArgument(f"cannot read special token {value!r} in tokenizer_config.json")


def _chat_template_source(config: Mapping[str, Any], folder: Path) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    if template is None and (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if template is not None and not isinstance(template, str):
        raise InvalidArgument("chat_template in tokenizer_config.json must be a string")
    return template


def _byte_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: printable bytes stand for themselves, the others for chars from U+0100 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


_UNICODE_TO_BYTE = {c: b for b, c in _byte_to_unicode().items()}


def _decoder_kinds(decoder: Any) -> frozenset[str]:
    """The types of a tokenizer.json decoder and of the decoders a Sequence holds."""
    if not isinstance(decoder, dict):
        return frozenset()
    inner = decoder.get("decoders") or []
    return frozenset([str(decoder.get("type")), *(k for d in inner for k in _decoder_kinds(d))])


class TextTokenizer:
    """Encode, decode and chat rendering for one model. Thread-safe for concurrent encode/decode."""

    def __init__(self, tokenizer: Tokenizer, config: Mapping[str, Any], folder: Path,
                 generation_config: Mapping[str, Any] | None = None) -> None:
        self.folder = folder
        self._tokenizer = tokenizer
        # Some tokenizer.json files carry padding or truncation settings (sentence-transformers' BERT folders pad
        # to 128): transformers resets both on every call, and so does this class; lengths are checked elsewhere.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._add_declared_tokens(config)
        self.special_tokens_map: dict[str, str] = {
            name: content for name in SPECIAL_TOKEN_NAMES
            if (content := _token_content(config.get(name))) is not None
        }
        self._ensure_special_tokens_exist()
        self._configure_post_processor(config)
        self.bos_token_id = self._id_of(self.special_tokens_map.get("bos_token"))
        eos_ids = [self._id_of(self.special_tokens_map.get("eos_token"))]
        gen_eos = (generation_config or {}).get("eos_token_id")
        eos_ids.extend(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(i for i in eos_ids if i is not None))
        self.all_special_ids: frozenset[int] = frozenset(
            i for i, t in self._tokenizer.get_added_tokens_decoder().items() if t.special
        )
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.byte_token_ids: frozenset[int] = self._byte_fallback_ids()
        self._decoder_kinds = _decoder_kinds(json.loads(self._tokenizer.to_str()).get("decoder"))
        self._token_bytes: dict[int, bytes] = {}
        self.max_chars_per_token = self._max_chars_per_token()
        template = _chat_template_source(config, folder)
        self.chat_template = ChatTemplate(template, self.special_tokens_map) if template else None

    @classmethod
    def from_dir(cls, folder: str | Path) -> "TextTokenizer":
        """Loads tokenizer.json and tokenizer_config.json (and generation_config.json) from a model folder."""
        path = Path(folder)
        if not (path / "tokenizer.json").exists():
            raise NotFound(f"no tokenizer.json in {path}")
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        return cls(tokenizer, _read_json(path / "tokenizer_config.json"), path,
                   _read_json(path / "generation_config.json"))

    # ---- loading ----

    def _add_declared_tokens(self, config: Mapping[str, Any]) -> None:
        """Adds the tokens of `added_tokens_decoder` that tokenizer.json lacks (transformers does the same)."""
        known = set(self._tokenizer.get_added_tokens_decoder())
        declared = config.get("added_tokens_decoder") or {}
        for index in sorted(declared, key=int):
            spec = declared[index]
            if int(index) in known or self._tokenizer.token_to_id(spec["content"]) is not None:
                continue
            token = AddedToken(
                spec["content"], single_word=spec.get("single_word", False), lstrip=spec.get("lstrip", False),
                rstrip=spec.get("rstrip", False), normalized=spec.get("normalized", False),
                special=spec.get("special", True),
            )
            self._tokenizer.add_tokens([token])

    def _ensure_special_tokens_exist(self) -> None:
        for content in self.special_tokens_map.values():
            if self._tokenizer.token_to_id(content) is None:
                self._tokenizer.add_special_tokens([AddedToken(content, special=True, normalized=False)])

    def _configure_post_processor(self, config: Mapping[str, Any]) -> None:
        """BOS/EOS come from tokenizer.json's post-processor, as in transformers 5; only a tokenizer.json
        without one takes add_bos_token / add_eos_token from tokenizer_config.json (as older releases did)."""
        if self._tokenizer.post_processor is not None:
            return
        bos, eos = self.special_tokens_map.get("bos_token"), self.special_tokens_map.get("eos_token")
        add_bos = bool(config.get("add_bos_token", False)) and bos is not None
        add_eos = bool(config.get("add_eos_token", False)) and eos is not None
        if not (add_bos or add_eos):
            return
        single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
        pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
        specials = [(t, self._tokenizer.token_to_id(t)) for t, on in ((bos, add_bos), (eos, add_eos)) if on]
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=specials
        )

    def _byte_fallback_ids(self) -> frozenset[int]:
        """Ids of `<0xNN>` tokens when the model falls back to bytes (their text depends on neighbours)."""
        model = json.loads(self._tokenizer.to_str()).get("model", {})
        if not model.get("byte_fallback"):
            return frozenset()
        return frozenset(i for t, i in self._tokenizer.get_vocab().items() if _BYTE_TOKEN.match(t))

    def _max_chars_per_token(self) -> int | None:
        """The most characters of text one token can stand for, when every character becomes some token (a
        byte-level or byte-fallback model); None otherwise (WordPiece drops spaces, [UNK] covers a whole word)."""
        model = json.loads(self._tokenizer.to_str())
        if not (self.byte_token_ids or "ByteLevel" in self._decoder_kinds
                or (model.get("model") or {}).get("byte_fallback")):
            return None
        # A piece of the byte-level alphabet stands for one byte per character, and a text character is at
        # least one byte; a byte-fallback piece is the text itself (with U+2581 for a space).
        return max(len(piece) for piece in self._tokenizer.get_vocab(with_added_tokens=True))

    def max_prompt_chars(self, max_tokens: int) -> int | None:
        """The longest text that can encode to at most max_tokens tokens (None: no bound known)."""
        return None if self.max_chars_per_token is None else max_tokens * self.max_chars_per_token

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._tokenizer.token_to_id(token)

    # ---- encoding and decoding ----

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    @property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (for batch decoding in the detokenizer)."""
        return self._tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Encodes many texts in one call (the library spreads it over threads without holding the GIL)."""
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return self._tokenizer.decode_batch([list(s) for s in sequences], skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token adds to the text after other tokens: a byte-fallback token's single byte, a
        byte-level token's bytes, a sentencepiece token with its leading space. Decoding the token alone would
        give U+FFFD for a piece of a character and drop a leading space that a decoder strips."""
        cached = self._token_bytes.get(token_id)
        if cached is not None:
            return cached
        piece = self._tokenizer.id_to_token(token_id)
        if piece is None or token_id in self.all_special_ids:
            out = self.decode([token_id]).encode()
        elif token_id in self.byte_token_ids:
            out = bytes([int(_BYTE_TOKEN.match(piece).group(1), 16)])  # type: ignore[union-attr]
        elif "ByteLevel" in self._decoder_kinds and all(c in _UNICODE_TO_BYTE for c in piece):
            out = bytes(_UNICODE_TO_BYTE[c] for c in piece)
        elif "Metaspace" in self._decoder_kinds or "Replace" in self._decoder_kinds:
            out = piece.replace("\u2581", " ").encode()
        else:
            out = self.decode([token_id]).encode()
        self._token_bytes[token_id] = out
        return out

    def check_token_ids(self, token_ids: Sequence[int], model_vocab_size: int = 0) -> None:
        """Raises InvalidArgument when an id is outside the vocabulary: this tokenizer's, and the model's when
        `model_vocab_size` is given and smaller (0: unknown)."""
        size = min(self.vocab_size, model_vocab_size) if model_vocab_size else self.vocab_size
        bad = [t for t in token_ids if not 0 <= t < size]
        if bad:
            raise InvalidArgument(f"token ids out of the vocabulary (size {size}): {bad[:8]}")

    def render_chat(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt string for a conversation, as apply_chat_template(..., tools=tools, tokenize=False) gives it."""
        if self.chat_template is None:
            raise InvalidArgument("this model has no chat template; send a plain prompt instead")
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    @property
    def tool_call_format(self) -> str:
        """How this model writes tool calls (see services.tokenizer.tools)."""
        return tool_call_format(None if self.chat_template is None else self.chat_template.source)
