"""`jtcse.load(...)` answers sentence-transformers' calls like `SentenceTransformer` does on the same folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import build_tiny_model

SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs run across a snowy field while a child watches them.",
    "x",
    "The stock market fell sharply on Tuesday, analysts said.",
    "A woman slices an onion.",
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["cls", "mean"])
def tower_folder(request, tmp_path_factory, tiny_bert):
    """A single tower exported as a sentence-transformers folder, as `jtcse package` ships it."""
    from jtcse.release.export import export_sentence_transformer

    target = tmp_path_factory.mktemp(f"st_{request.param}") / "model"
    export_sentence_transformer(tiny_bert, target, pooling=request.param, max_seq_length=32)
    return target


@pytest.fixture(scope="module")
def models(tower_folder):
    from sentence_transformers import SentenceTransformer

    import jtcse

    return SentenceTransformer(str(tower_folder), device="cpu"), jtcse.load(tower_folder, device="cpu")


def same(a, b, atol=1e-5):
    """Same Python type, dtype, shape and values (within float tolerance)."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y, atol)
        return
    assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape), (a.dtype, b.dtype, a.shape, b.shape)
    if isinstance(a, torch.Tensor):
        assert a.device == b.device
        a, b = a.cpu().numpy(), b.cpu().numpy()
    assert np.abs(a.astype(np.float64) - b.astype(np.float64)).max() <= atol


CALLS = [
    dict(),
    dict(batch_size=2, show_progress_bar=True),
    dict(normalize_embeddings=True),
    dict(convert_to_tensor=True),
    dict(convert_to_tensor=True, normalize_embeddings=True, device="cpu"),
    dict(convert_to_numpy=False),
    dict(convert_to_numpy=True, precision="float32", show_progress_bar=False),
    dict(truncate_dim=8, normalize_embeddings=True),
]


@pytest.mark.parametrize("kwargs", CALLS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults")
def test_encode_matches_sentence_transformers(models, kwargs):
    st, ours = models
    same(st.encode(SENTENCES, **kwargs), ours.encode(SENTENCES, **kwargs))
    same(st.encode(SENTENCES[1], **kwargs), ours.encode(SENTENCES[1], **kwargs))  # one string: one 1-D vector


def test_single_string_is_a_vector_and_quantised_precisions_match(models):
    st, ours = models
    vector = ours.encode("A man is playing a guitar.")
    assert isinstance(vector, np.ndarray) and vector.shape == (32,) and vector.dtype == np.float32
    same(st.encode(SENTENCES, precision="ubinary"), ours.encode(SENTENCES, precision="ubinary"), atol=0)
    st_int8, our_int8 = st.encode(SENTENCES, precision="int8"), ours.encode(SENTENCES, precision="int8")
    same(st_int8, our_int8, atol=1)  # one bucket apart at most: float rounding at a bucket edge
    with pytest.raises(ValueError, match="precision 'float16' is not supported"):
        ours.encode(SENTENCES, precision="float16")
    with pytest.raises(ValueError, match="must be a positive integer"):
        ours.encode(SENTENCES, batch_size=0)


def test_similarity_and_dimension_match_sentence_transformers(models):
    st, ours = models
    assert (
        ours.get_sentence_embedding_dimension() == ours.get_embedding_dimension() == st.get_embedding_dimension() == 32
    )
    assert ours.similarity_fn_name == st.similarity_fn_name == "cosine"
    vectors = ours.encode(SENTENCES)
    same(st.similarity(vectors[:2], vectors), ours.similarity(vectors[:2], vectors))
    same(st.similarity(vectors[0], vectors), ours.similarity(vectors[0], vectors))  # a 1-D side is one row
    tensors = ours.encode(SENTENCES, convert_to_tensor=True)
    same(st.similarity(tensors, tensors), ours.similarity(tensors, tensors))
    same(st.similarity_pairwise(tensors[:3], tensors[2:]), ours.similarity_pairwise(tensors[:3], tensors[2:]))
    # The naive reference: cosine by hand.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.abs(ours.similarity(vectors, vectors).numpy() - unit @ unit.T).max() < 1e-5


def test_empty_input_keeps_the_vector_width(models):
    _, ours = models
    assert ours.encode([]).shape == (0, 32)
    assert ours.encode([], convert_to_tensor=True).shape == (0, 32)


def test_twin_answers_the_same_calls_as_the_sum_of_its_towers_in_sentence_transformers(tmp_path, tiny_bert):
    """A twin has no sentence-transformers form: its reference is the sum of its two exported towers."""
    from sentence_transformers import SentenceTransformer

    import jtcse
    from jtcse.modeling.towers import load_tower
    from jtcse.release.export import export_sentence_transformer
    from jtcse.training.objectives import save_twin

    tower_a, tok = load_tower(str(tiny_bert))
    tower_b, _ = load_tower(str(build_tiny_model(tmp_path / "b", seed=1)))
    save_twin(tower_a, tower_b, tok, tmp_path / "twin", poolings=("cls", "cls"), combine="sum")
    twin = jtcse.load(tmp_path / "twin", device="cpu", max_length=32)
    references = []
    for name in ("tower_a", "tower_b"):
        export_sentence_transformer(tmp_path / "twin" / name, tmp_path / f"st_{name}", pooling="cls", max_seq_length=32)
        references.append(SentenceTransformer(str(tmp_path / f"st_{name}"), device="cpu"))
    summed = sum(st.encode(SENTENCES, convert_to_tensor=True) for st in references)

    assert twin.get_sentence_embedding_dimension() == 32
    same(summed.numpy(), twin.encode(SENTENCES, batch_size=2, show_progress_bar=False, device="cpu"))
    same(summed, twin.encode(SENTENCES, convert_to_tensor=True))
    same(
        torch.nn.functional.normalize(summed, dim=-1),
        twin.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True),
    )
    same(summed[2], twin.encode(SENTENCES[2], convert_to_tensor=True))
    same(list(summed), twin.encode(SENTENCES, convert_to_numpy=False))
    same(references[0].similarity(summed, summed), twin.similarity(summed, summed))


@pytest.mark.parametrize(
    ("poolings", "combine", "normalize"),
    [(("mean", "cls"), "sum", True), (("cls", "mean"), "concat", True), (("mean", "mean"), "concat", False)],
)
def test_a_twin_whose_towers_pool_differently_equals_its_towers_in_sentence_transformers(
    tmp_path, tiny_bert, poolings, combine, normalize
):
    """Each tower keeps its own pooling (pretrain.tower_*.pooling), and a normalised twin L2-normalises each
    tower's vector before combining: the reference is built from the two towers exported one by one."""
    from sentence_transformers import SentenceTransformer

    import jtcse
    from jtcse.modeling.towers import load_tower
    from jtcse.release.export import export_sentence_transformer
    from jtcse.training.objectives import save_twin

    tower_a, tok = load_tower(str(tiny_bert))
    tower_b, _ = load_tower(str(build_tiny_model(tmp_path / "b", seed=1)))
    save_twin(tower_a, tower_b, tok, tmp_path / "twin", poolings=poolings, combine=combine, normalize=normalize)
    twin = jtcse.load(tmp_path / "twin", device="cpu", max_length=32)
    parts = []
    for name, pooling in zip(("tower_a", "tower_b"), poolings):
        export_sentence_transformer(
            tmp_path / "twin" / name, tmp_path / f"st_{name}", pooling=pooling, max_seq_length=32
        )
        vectors = SentenceTransformer(str(tmp_path / f"st_{name}"), device="cpu").encode(
            SENTENCES, convert_to_tensor=True, normalize_embeddings=normalize
        )
        parts.append(vectors)
    expected = parts[0] + parts[1] if combine == "sum" else torch.cat(parts, dim=-1)

    assert twin.get_sentence_embedding_dimension() == (32 if combine == "sum" else 64)
    same(expected.numpy(), twin.encode(SENTENCES, batch_size=2, show_progress_bar=False, device="cpu"))
