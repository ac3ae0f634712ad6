"""Embedding inputs under the model's limit, on the real all-MiniLM-L6-v2 tokenizer: the same ids as
sentence-transformers, over-long inputs refused or (on request) cut the way sentence-transformers cuts them."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.tokenizer.embed_inputs import EmbedEncoder, EmbedInput
from services.tokenizer.tokenizer import TextTokenizer
from tests.minilm import minilm_folder


@pytest.fixture(scope="module")
def encoder() -> EmbedEncoder:
    return EmbedEncoder(TextTokenizer.from_dir(minilm_folder()))


def test_limit_is_the_shorter_of_the_folder_and_the_model(encoder: EmbedEncoder) -> None:
    assert (encoder.st_max_len, encoder.max_len(512), encoder.max_len(100), encoder.max_len(0)) == (256, 256, 100, 256)


def test_texts_encode_without_the_padding_tokenizer_json_asks_for(encoder: EmbedEncoder) -> None:
    assert encoder.encode([EmbedInput(text="hello world")], 256, False) == [[101, 7592, 2088, 102]]


def test_truncation_keeps_the_final_sep_as_sentence_transformers_does(encoder: EmbedEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    text = "The quick brown fox jumps over the lazy dog " * 40
    st = SentenceTransformer(str(minilm_folder()), device="cpu")
    expected = st.tokenize([text])["input_ids"][0].tolist()
    with pytest.raises(InvalidArgument, match="input 1 has 362 tokens, more than the model's embedding limit 256"):
        encoder.encode([EmbedInput(text="short"), EmbedInput(text=text)], 256, False)
    got = encoder.encode([EmbedInput(text="short"), EmbedInput(text=text)], 256, True)
    assert got[1] == expected and len(got[1]) == 256 and got[1][-1] == 102
    assert got[0] == [101, 2460, 102]


def test_token_ids_are_used_as_given_and_cut_by_keeping_the_first(encoder: EmbedEncoder) -> None:
    assert encoder.encode([EmbedInput(token_ids=(5, 6, 7))], 256, False) == [[5, 6, 7]]
    assert encoder.encode([EmbedInput(token_ids=(5, 6, 7))], 2, True) == [[5, 6]]
    with pytest.raises(InvalidArgument, match="input 0 has 3 tokens, more than the model's embedding limit 2"):
        encoder.encode([EmbedInput(token_ids=(5, 6, 7))], 2, False)


@pytest.mark.parametrize(("inputs", "message"), [
    ([], "input must not be empty"),
    ([EmbedInput(text="a"), EmbedInput(text="")], "input 1 is an empty string"),
    ([EmbedInput(token_ids=())], "input 0 has no tokens"),
    ([EmbedInput(token_ids=(30522,))], "token ids out of the vocabulary"),
])
def test_empty_inputs_and_out_of_vocabulary_ids_are_invalid_argument_with_their_message(
        encoder: EmbedEncoder, inputs: list[EmbedInput], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        encoder.encode(inputs, 256, False)
