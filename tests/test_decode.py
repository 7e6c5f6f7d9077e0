"""Decoders: TF/Keras reference cases 043-049, properties against slow references, layouts, dtypes, threads and
bad inputs."""
import json

import numpy as np
import pytest
import scipy.sparse

from cyctc import _decode
from cyctc.decode import SparseDecoded, ctc_beam_search_decoder, ctc_decode, ctc_greedy_decoder

import decode_reference as ref

GREEDY_CASES = ["043_greedy_merge1_blankdefault.npz", "044_greedy_merge0_blankdefault.npz",
                "045_greedy_merge1_blank0.npz", "046_greedy_merge1_blankmid.npz", "047_greedy_merge1_blankneg1.npz"]
BEAM_CASES = ["048_beam_w10_top3.npz", "049_beam_w10_top3_f64.npz"]


def load(name):
    path = ref.refdata_path(name)
    if path is None:
        pytest.skip(f"reference case {name} not found (tests/data or ../shared/refdata)")
    d = np.load(path)
    case = {k: d[k] for k in d.files}
    case["options"] = json.loads(str(d["options"]))
    return case


def assert_same_sparse(got, d, k):
    np.testing.assert_array_equal(got.indices, d[f"decoded{k}_indices"])
    np.testing.assert_array_equal(got.values, d[f"decoded{k}_values"])
    np.testing.assert_array_equal(got.dense_shape, d[f"decoded{k}_shape"])
    assert got.indices.dtype == got.values.dtype == got.dense_shape.dtype == np.int64


# ---------------------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("name", GREEDY_CASES)
def test_greedy_reference(name):
    d = load(name)
    assert str(d["api"]) == "tf.nn.ctc_greedy_decoder" and bool(d["time_major"])
    opts = d["options"]
    decoded, neg_sum = ctc_greedy_decoder(d["logits"], d["logit_length"], merge_repeated=opts["merge_repeated"],
                                          blank_index=opts["blank_index"])
    assert len(decoded) == 1
    assert_same_sparse(decoded[0], d, 0)
    np.testing.assert_array_equal(decoded[0].to_dense(), d["decoded"][0])
    assert neg_sum.shape == (d["logits"].shape[1], 1) and neg_sum.dtype == d["logits"].dtype
    np.testing.assert_allclose(neg_sum, d["neg_sum_logits"], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", BEAM_CASES)
def test_beam_reference_all_paths(name):
    d = load(name)
    opts = d["options"]
    res = ctc_beam_search_decoder(d["logits"], d["logit_length"], beam_width=opts["beam_width"],
                                  top_paths=opts["top_paths"])
    decoded, log_probs = res  # tuple-unpackable like TF's result
    assert len(decoded) == opts["top_paths"]
    for k, sp in enumerate(decoded):
        assert_same_sparse(sp, d, k)
        np.testing.assert_array_equal(sp.to_dense(maxlen=d["decoded"].shape[2]), d["decoded"][k])
    assert log_probs.shape == d["log_probabilities"].shape and log_probs.dtype == d["logits"].dtype
    np.testing.assert_allclose(log_probs, d["log_probabilities"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", GREEDY_CASES[:1] + BEAM_CASES)
def test_reference_batch_major_and_strided_layouts(name):
    d = load(name)
    x = d["logits"]
    L = d["logit_length"]
    variants = [x.swapaxes(0, 1), np.asfortranarray(x), np.ascontiguousarray(x[::-1])[::-1]]
    big = np.zeros(x.shape[:2] + (2 * x.shape[2],), x.dtype)
    big[:, :, ::2] = x  # class axis not contiguous: copied internally
    variants.append(big[:, :, ::2])
    ro = x.copy()
    ro.setflags(write=False)
    variants.append(ro)
    if "beam" in name:
        base = ctc_beam_search_decoder(x, L, 10, 3)
        for i, v in enumerate(variants):
            r = ctc_beam_search_decoder(v, L, 10, 3, time_major=(i != 0))
            for a, b in zip(base.decoded, r.decoded):
                np.testing.assert_array_equal(a.to_dense(), b.to_dense())
            np.testing.assert_array_equal(base.log_probabilities, r.log_probabilities)
    else:
        base = ctc_greedy_decoder(x, L)
        for i, v in enumerate(variants):
            r = ctc_greedy_decoder(v, L, time_major=(i != 0))
            np.testing.assert_array_equal(base.decoded[0].to_dense(), r.decoded[0].to_dense())
            np.testing.assert_array_equal(base.neg_sum_logits, r.neg_sum_logits)


# ---------------------------------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("merge", [True, False])
def test_greedy_matches_reference_random(dtype, merge):
    rng = np.random.default_rng(1)
    for _ in range(20):
        T, B, C = int(rng.integers(0, 12)), int(rng.integers(1, 5)), int(rng.integers(1, 6))
        x = rng.normal(size=(T, B, C)).astype(dtype)
        if rng.random() < 0.3 and T:
            x[rng.integers(0, T)] = 0  # a frame of exact ties: the first class wins
        L = rng.integers(0, T + 1, size=B)
        blank = int(rng.integers(-C, C))
        decoded, neg_sum = ctc_greedy_decoder(x, L, merge_repeated=merge, blank_index=blank)
        assert neg_sum.dtype == np.promote_types(dtype, np.float32)  # float16 answers in float32, as TF
        for b in range(B):
            want, ns = ref.greedy(x[: L[b], b], blank % C, merge)
            assert decoded[0].to_list()[b].tolist() == want
            np.testing.assert_allclose(float(neg_sum[b, 0]), ns, rtol=1e-12 if dtype == np.float64 else 1e-6)


def test_greedy_repeat_semantics():
    # frames: a a _ a b b  with blank 0
    path = [1, 1, 0, 1, 2, 2]
    x = np.full((len(path), 1, 3), -5.0)
    x[np.arange(len(path)), 0, path] = 1.0
    assert ctc_greedy_decoder(x, [6], True, 0).decoded[0].to_list()[0].tolist() == [1, 1, 2]
    assert ctc_greedy_decoder(x, [6], False, 0).decoded[0].to_list()[0].tolist() == [1, 1, 1, 2, 2]
    assert ctc_greedy_decoder(x, [3], True, 0).decoded[0].to_list()[0].tolist() == [1]


def test_sparse_result_keeps_class_zero():
    x = np.full((4, 2, 3), -3.0)
    x[:, 0, 0] = 2.0  # example 0: class 0 on every frame
    x[[0, 2], 1, 0] = 2.0  # example 1: 0 _ 0 _  (blank 2)
    x[[1, 3], 1, 2] = 2.0
    dec = ctc_greedy_decoder(x, [4, 4], merge_repeated=False).decoded[0]
    assert dec.values.tolist() == [0, 0, 0, 0, 0, 0]
    sp = dec.to_scipy()
    assert isinstance(sp, scipy.sparse.csr_matrix) and sp.dtype == np.int64
    assert sp.shape == (2, 4) and sp.nnz == 6
    assert sp.getnnz(axis=1).tolist() == [4, 2] == dec.lengths.tolist()
    np.testing.assert_array_equal(dec.to_dense(), [[0, 0, 0, 0], [0, 0, -1, -1]])
    np.testing.assert_array_equal(dec.to_dense(default=7, maxlen=5), [[0, 0, 0, 0, 7], [0, 0, 7, 7, 7]])
    with pytest.raises(ValueError, match="maxlen"):
        dec.to_dense(maxlen=3)


def test_empty_batch_and_zero_frames():
    dec, ns = ctc_greedy_decoder(np.zeros((5, 0, 3), np.float32), np.zeros(0, np.int32))
    assert dec[0].indices.shape == (0, 2) and dec[0].dense_shape.tolist() == [0, 0] and ns.shape == (0, 1)
    dec, lp = ctc_beam_search_decoder(np.zeros((0, 2, 3)), [0, 0], beam_width=4, top_paths=2)
    assert dec[0].dense_shape.tolist() == [2, 0] and dec[0].to_dense().shape == (2, 0)
    np.testing.assert_array_equal(lp[:, 0], 0.0)  # the empty prefix, probability 1
    assert np.all(lp[:, 1] == -np.inf)  # TF raises here (fewer leaves than paths); cyctc pads


# ---------------------------------------------------------------------------------------------------- beam


def test_beam_matches_python_transcription_of_tf():
    """Random sizes incl. long inputs that grow the prefix tree past the C kernel's compaction threshold."""
    rng = np.random.default_rng(2)
    shapes = [(int(rng.integers(0, 14)), int(rng.integers(1, 6)), int(rng.integers(1, 8))) for _ in range(60)]
    shapes += [(400, 12, 16), (300, 30, 12)]
    for T, C, W in shapes:
        K = int(rng.integers(1, W + 1))
        merge = bool(rng.integers(0, 2))
        x = rng.normal(size=(T, 1, C)) * rng.choice([0.3, 1.0, 4.0])
        dec, lp = ctc_beam_search_decoder(x, [T], W, K, merge_repeated=merge)
        want = ref.beam_search(x[:, 0], W, K, merge)
        for k in range(K):
            if k < len(want):
                assert dec[k].to_list()[0].tolist() == want[k][0], (T, C, W, K, k)
                np.testing.assert_allclose(lp[0, k], want[k][1], rtol=1e-12, atol=1e-12)
            else:
                assert dec[k].lengths[0] == 0 and lp[0, k] == -np.inf


def test_wide_beam_is_exact_on_tiny_inputs():
    """With a beam wider than the number of prefixes nothing is pruned: the scores are exact labeling
    probabilities and the paths are the most probable labelings."""
    rng = np.random.default_rng(3)
    for _ in range(15):
        T, C = int(rng.integers(1, 6)), int(rng.integers(2, 4))
        x = rng.normal(size=(T, 1, C)) * 1.5
        exact = ref.labeling_log_probs(x[:, 0], C - 1)
        ranked = sorted(exact.items(), key=lambda kv: -kv[1])
        K = min(4, len(ranked))
        dec, lp = ctc_beam_search_decoder(x, [T], beam_width=500, top_paths=K)
        for k in range(K):
            assert tuple(dec[k].to_list()[0].tolist()) == ranked[k][0]
            np.testing.assert_allclose(lp[0, k], ranked[k][1], rtol=1e-12)


def test_beam_scores_bounded_by_exact_probability():
    rng = np.random.default_rng(4)
    for _ in range(10):
        T, C = int(rng.integers(2, 7)), 3
        x = rng.normal(size=(T, 1, C)) * 2
        exact = ref.labeling_log_probs(x[:, 0], C - 1)
        dec, lp = ctc_beam_search_decoder(x, [T], beam_width=2, top_paths=2)
        assert lp[0, 0] >= lp[0, 1]
        for k in range(2):
            seq = tuple(dec[k].to_list()[0].tolist())
            assert lp[0, k] <= exact[seq] + 1e-12  # the beam sums a subset of the alignments


def test_beam_equals_greedy_on_peaked_inputs():
    """Where one frame path carries almost all the probability, every beam width finds its collapse, as greedy."""
    rng = np.random.default_rng(5)
    T, B, C = 30, 6, 5
    path = rng.integers(0, C, size=(T, B))
    x = rng.normal(size=(T, B, C))
    np.put_along_axis(x, path[..., None], 40.0, axis=2)
    L = rng.integers(0, T + 1, size=B)
    greedy_seq = ctc_greedy_decoder(x, L).decoded[0].to_list()
    for W in (1, 3, 10):
        dec, lp = ctc_beam_search_decoder(x, L, beam_width=W)
        assert [s.tolist() for s in dec[0].to_list()] == [s.tolist() for s in greedy_seq]
        assert np.all(np.abs(lp) < 1e-10)  # log of ~1


def test_merge_repeated_collapses_the_same_beams():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 5, 3)) * 2  # few classes: plenty of repeated labels
    L = rng.integers(0, 41, size=5)
    v2 = ctc_beam_search_decoder(x, L, 8, 4)
    v1 = ctc_beam_search_decoder(x, L, 8, 4, merge_repeated=True)
    np.testing.assert_array_equal(v1.log_probabilities, v2.log_probabilities)
    seen_repeat = False
    for a, b in zip(v2.decoded, v1.decoded):
        for sa, sb in zip(a.to_list(), b.to_list()):
            assert sb.tolist() == ref.merge_runs(sa.tolist())
            seen_repeat |= len(sa) != len(sb)
    assert seen_repeat


def test_nonfinite_inputs():
    x = np.zeros((5, 3, 4))
    x[2, 1, 0] = np.nan
    x[3, 2, 1] = np.inf
    dec, lp = ctc_beam_search_decoder(x, [5, 5, 3], beam_width=3, top_paths=2)
    assert np.all(np.isfinite(lp[0])) and np.all(np.isnan(lp[1])) and np.all(np.isfinite(lp[2]))
    assert dec[0].lengths.tolist()[1] == 0
    x = np.zeros((3, 1, 3))
    x[:, 0, 0] = -np.inf  # class 0 impossible: never decoded, scores stay finite
    dec, lp = ctc_beam_search_decoder(x, [3], beam_width=5, top_paths=2)
    assert np.all(np.isfinite(lp)) and 0 not in dec[0].values and 0 not in dec[1].values


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_low_precision_inputs_match_float64_of_same_values(dtype):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 4, 6)).astype(dtype)
    L = rng.integers(0, 21, size=4)
    a = ctc_beam_search_decoder(x, L, 6, 3)
    b = ctc_beam_search_decoder(x.astype(np.float64), L, 6, 3)
    out = np.float32  # float16 scores are answered in float32 (a float16 score below -65504 would be -inf)
    assert a.log_probabilities.dtype == out
    for s, t in zip(a.decoded, b.decoded):
        np.testing.assert_array_equal(s.to_dense(), t.to_dense())
    np.testing.assert_array_equal(a.log_probabilities, b.log_probabilities.astype(out))


# ---------------------------------------------------------------------------------------------------- keras


def test_keras_ctc_decode_greedy():
    rng = np.random.default_rng(8)
    B, T, C = 5, 12, 6
    y = rng.dirichlet(np.ones(C), size=(B, T)).astype(np.float32)
    y[0, :, :] = np.eye(C, dtype=np.float32)[rng.integers(0, C, size=T)]  # one-hot rows: p = 0 entries
    L = rng.integers(0, T + 1, size=B)
    decoded, log_prob = ctc_decode(y, L)
    assert len(decoded) == 1 and decoded[0].shape == (B, T) and decoded[0].dtype == np.int64
    assert log_prob.shape == (B, 1) and log_prob.dtype == np.float32
    logp = np.log(y + np.float32(1e-7))
    for b in range(B):
        seq, ns = ref.greedy(logp[b, : L[b]], C - 1, True)
        assert decoded[0][b, : len(seq)].tolist() == seq and np.all(decoded[0][b, len(seq):] == -1)
        np.testing.assert_allclose(log_prob[b, 0], ns, rtol=1e-6)


def test_keras_ctc_decode_beam_is_tf1_beam_on_log_probs():
    rng = np.random.default_rng(9)
    B, T, C = 4, 15, 4
    y = rng.dirichlet(np.ones(C) * 0.5, size=(B, T))
    L = rng.integers(0, T + 1, size=(B, 1))  # Keras's (B, 1) shape is accepted
    decoded, log_prob = ctc_decode(y, L, greedy=False, beam_width=7, top_paths=3)
    want = ctc_beam_search_decoder(np.log(y + 1e-7), L[:, 0], 7, 3, merge_repeated=True, time_major=False)
    assert len(decoded) == 3
    for d, w in zip(decoded, want.decoded):
        np.testing.assert_array_equal(d, w.to_dense(maxlen=T))
    np.testing.assert_array_equal(log_prob, want.log_probabilities)


# ---------------------------------------------------------------------------------------------------- threads


def test_decode_extension_has_the_same_openmp_state_as_the_loss():
    from cyctc import _cpu  # whether OpenMP is expected at all is tests/test_build.py's test_openmp_state

    assert _decode.openmp_enabled() == _cpu.openmp_enabled()


def test_results_identical_for_any_thread_count():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(50, 23, 7)).astype(np.float32)
    L = rng.integers(0, 51, size=23)
    base_g = ctc_greedy_decoder(x, L, num_threads=1)
    base_b = ctc_beam_search_decoder(x, L, 12, 4, num_threads=1)
    for nt in (2, 3, -1, None):
        g = ctc_greedy_decoder(x, L, num_threads=nt)
        b = ctc_beam_search_decoder(x, L, 12, 4, num_threads=nt)
        np.testing.assert_array_equal(g.decoded[0].to_dense(), base_g.decoded[0].to_dense())
        assert g.neg_sum_logits.tobytes() == base_g.neg_sum_logits.tobytes()
        for s, t in zip(b.decoded, base_b.decoded):
            np.testing.assert_array_equal(s.indices, t.indices)
            np.testing.assert_array_equal(s.values, t.values)
        assert b.log_probabilities.tobytes() == base_b.log_probabilities.tobytes()


# ---------------------------------------------------------------------------------------------------- bad input

X = np.zeros((6, 2, 4), np.float32)
GOOD_LEN = np.array([6, 3])

BAD_GREEDY = [
    (dict(inputs=np.zeros((6, 4))), ValueError, "inputs"),
    (dict(inputs=np.zeros((6, 2, 0))), ValueError, "inputs"),
    (dict(inputs=X.astype(np.int32)), TypeError, "inputs"),
    (dict(inputs=X.astype(np.complex64)), TypeError, "inputs"),
    (dict(inputs="abc"), TypeError, "inputs"),
    (dict(sequence_length=np.array([6, 3, 1])), ValueError, "sequence_length"),
    (dict(sequence_length=np.array([7, 3])), ValueError, r"sequence_length\[0\]"),
    (dict(sequence_length=np.array([6, -1])), ValueError, "sequence_length"),
    (dict(sequence_length=np.array([6.0, 3.0])), TypeError, "sequence_length"),
    (dict(sequence_length=np.ones((2, 2), int)), ValueError, "sequence_length"),
    (dict(blank_index=4), ValueError, "blank_index"),
    (dict(blank_index=-5), ValueError, "blank_index"),
    (dict(blank_index=1.0), TypeError, "blank_index"),
    (dict(merge_repeated="yes"), TypeError, "merge_repeated"),
    (dict(num_threads=0), ValueError, "num_threads"),
    (dict(num_threads=1.5), TypeError, "num_threads"),
]


@pytest.mark.parametrize("kw,exc,match", BAD_GREEDY)
def test_greedy_bad_inputs(kw, exc, match):
    call = dict(inputs=X, sequence_length=GOOD_LEN)
    call.update(kw)
    with pytest.raises(exc, match=match):
        ctc_greedy_decoder(**call)


BAD_BEAM = [
    (dict(beam_width=0), ValueError, "beam_width"),
    (dict(beam_width=2.0), TypeError, "beam_width"),
    (dict(top_paths=0), ValueError, "top_paths"),
    (dict(top_paths=4, beam_width=3), ValueError, "top_paths"),
    (dict(sequence_length=[1]), ValueError, "sequence_length"),
    (dict(inputs=np.zeros((2, 6, 2, 4))), ValueError, "inputs"),
    (dict(inputs=X.astype(np.longdouble)), TypeError, "inputs"),
]


@pytest.mark.parametrize("kw,exc,match", BAD_BEAM)
def test_beam_bad_inputs(kw, exc, match):
    call = dict(inputs=X, sequence_length=GOOD_LEN, beam_width=3, top_paths=1)
    call.update(kw)
    if call["inputs"].dtype == np.longdouble and np.dtype(np.longdouble).itemsize == 8:
        pytest.skip("long double is float64 on this platform")
    with pytest.raises(exc, match=match):
        ctc_beam_search_decoder(**call)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(y_pred=np.zeros((2, 6))), ValueError, "y_pred"),
    (dict(y_pred=np.zeros((2, 6, 4), int)), TypeError, "y_pred"),
    (dict(input_length=[7, 1]), ValueError, "input_length"),
    (dict(greedy=False, top_paths=5, beam_width=4), ValueError, "top_paths"),
    (dict(greedy=False, beam_width=-1), ValueError, "beam_width"),
])
def test_keras_decode_bad_inputs(kw, exc, match):
    call = dict(y_pred=np.full((2, 6, 4), 0.25), input_length=[6, 2])
    call.update(kw)
    with pytest.raises(exc, match=match):
        ctc_decode(**call)


def test_sparse_decoded_repr_and_lists():
    dec = ctc_greedy_decoder(np.eye(3)[[0, 1, 2, 0]][:, None, :], [4], blank_index=2).decoded[0]
    assert isinstance(dec, SparseDecoded)
    assert [s.tolist() for s in dec.to_list()] == [[0, 1, 0]]
    assert "dense_shape=(1, 3)" in repr(dec)
