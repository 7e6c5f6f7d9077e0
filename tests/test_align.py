"""Forced alignment: Viterbi against brute-force enumeration of every frame path, infeasible examples, the
segments helper, blank positions, layouts, threads and bad inputs."""
import numpy as np
import pytest
import scipy.sparse
from scipy.special import log_softmax

from cyctc.align import AlignResult, ctc_align, ctc_segments

import decode_reference as ref


def random_case(rng, T, C, L, blank):
    labels = rng.choice([c for c in range(C) if c != blank], size=L)
    if L >= 2 and rng.random() < 0.5:
        labels[1] = labels[0]  # an adjacent repeat: needs a blank between
    return labels


@pytest.mark.parametrize("blank_index", [0, 1, -1])
def test_viterbi_equals_brute_force(blank_index):
    rng = np.random.default_rng(11)
    checked_infeasible = checked_feasible = 0
    for _ in range(40):
        T, C = int(rng.integers(0, 7)), int(rng.integers(2, 4))
        blank = blank_index % C
        L = int(rng.integers(0, 4))
        labels = random_case(rng, T, C, L, blank)
        lp = log_softmax(rng.normal(size=(1, T, C)) * 2, axis=2)
        res = ctc_align(lp, labels[None, :], [T], [L], blank_index=blank_index)
        best, arg = ref.best_alignment(lp[0], labels, blank)
        if arg is None:
            checked_infeasible += 1
            assert not res.feasible[0] and res.log_prob[0] == -np.inf
            assert np.all(res.path[0] == -1)
        else:
            checked_feasible += 1
            assert res.feasible[0]
            np.testing.assert_allclose(res.log_prob[0], best, rtol=1e-12, atol=1e-12)
            assert res.path[0].tolist() == list(arg)  # the maximum is unique with random scores
            assert ref.collapse(res.path[0], blank) == labels.tolist()
            np.testing.assert_allclose(lp[0, np.arange(T), res.path[0]].sum(), res.log_prob[0], rtol=1e-12)
    assert checked_feasible > 10 and checked_infeasible > 3


def viterbi_with_documented_ties(lp, labels, blank):
    """The best path by the documented tie rule (README, ctc_align): of equally good predecessors, staying in the
    state beats the step from the previous state, which beats the skip; at the end the final blank beats the last
    label. None when no path exists. ``lp`` (T, C) must sum exactly (small integers) for ties to be exact."""
    ext = [blank]
    for c in labels:
        ext += [int(c), blank]
    T, S = len(lp), len(ext)
    score = np.full((T, S), -np.inf)
    back = np.zeros((T, S), dtype=int)
    score[0, :2] = [lp[0, c] for c in ext[:2]]
    for t in range(1, T):
        for s in range(S):
            steps = [0, 1] + ([2] if s % 2 and s >= 3 and ext[s] != ext[s - 2] else [])
            best = max((k for k in steps if k <= s), key=lambda k: score[t - 1, s - k])  # the first of a tie
            score[t, s], back[t, s] = score[t - 1, s - best] + lp[t, ext[s]], best
    s = S - 1 if S == 1 or score[-1, S - 1] >= score[-1, S - 2] else S - 2
    if score[-1, s] == -np.inf:
        return None
    path = []
    for t in range(T - 1, -1, -1):
        path.append(ext[s])
        s -= back[t, s]
    return path[::-1]


def test_ties_follow_the_documented_rule():
    """Scores on a coarse grid of whole numbers make many paths exactly as good: the path returned is the one the
    documented tie rule picks (a kernel that prefers moving on, or ending on the label, fails here)."""
    # by hand, uniform scores (every path equally good): the label as early as possible, then blanks
    assert ctc_align(np.zeros((1, 3, 3)), [[1]]).path[0].tolist() == [1, 0, 0]
    assert ctc_align(np.zeros((1, 3, 3)), [[1, 2]]).path[0].tolist() == [1, 2, 0]
    assert ctc_align(np.zeros((1, 4, 3)), [[1, 1]]).path[0].tolist() == [1, 0, 1, 0]
    rng = np.random.default_rng(23)
    checked = 0
    for _ in range(400):
        T, C = int(rng.integers(1, 8)), int(rng.integers(2, 5))
        blank = int(rng.integers(0, C))
        labels = random_case(rng, T, C, int(rng.integers(0, 4)), blank)
        lp = -rng.integers(0, 3, size=(T, C)).astype(np.float64)
        want = viterbi_with_documented_ties(lp, labels, blank)
        res = ctc_align(lp[None], [labels.tolist()], blank_index=blank)
        if want is None:
            assert not res.feasible[0]
            continue
        checked += 1
        assert res.path[0].tolist() == want, (lp, labels, blank)
    assert checked > 250


def test_batch_with_lengths_padding_and_both_layouts():
    rng = np.random.default_rng(12)
    B, T, C, Lmax = 7, 6, 3, 3
    lp = log_softmax(rng.normal(size=(B, T, C)), axis=2).astype(np.float32)
    labels = rng.integers(1, C, size=(B, Lmax))
    label_length = rng.integers(0, Lmax + 1, size=B)
    input_length = rng.integers(0, T + 1, size=B)
    res = ctc_align(lp, labels, input_length, label_length)
    res_tm = ctc_align(lp.swapaxes(0, 1), labels, input_length, label_length, time_major=True)
    for a, b in zip(res, res_tm):
        np.testing.assert_array_equal(a, b)
    assert res.path.shape == (B, T) and res.path.dtype == np.int64
    assert res.log_prob.dtype == np.float64 and res.feasible.dtype == bool
    for b in range(B):
        n, L = input_length[b], label_length[b]
        assert np.all(res.path[b, n:] == -1)
        best, arg = ref.best_alignment(lp[b, :n].astype(np.float64), labels[b, :L], 0)
        assert res.feasible[b] == (arg is not None)
        if arg is not None:
            assert res.path[b, :n].tolist() == list(arg)
            np.testing.assert_allclose(res.log_prob[b], best, rtol=1e-12)


def test_infeasible_examples_are_reported_not_raised():
    lp = np.log(np.full((4, 5, 3), 1 / 3))
    labels = np.array([[1, 1, 2], [1, 2, 0], [1, 1, 0], [1, 0, 0]])
    # 3 labels with a repeat need 4 frames; 2 labels need 2; [1, 1] needs 3 frames but gets 2
    res = ctc_align(lp, labels, [3, 2, 2, 0], [3, 2, 2, 0])
    assert res.feasible.tolist() == [False, True, False, True]
    assert res.log_prob[0] == -np.inf and res.log_prob[2] == -np.inf
    assert res.log_prob[3] == 0.0 and res.path[3].tolist() == [-1] * 5  # no frames, no labels: the empty path
    np.testing.assert_allclose(res.log_prob[1], 2 * np.log(1 / 3))
    assert res.path[1, :2].tolist() == [1, 2]


def test_zero_probability_frames_make_examples_infeasible():
    lp = np.log(np.full((1, 4, 3), 1 / 3))
    lp[0, :, 2] = -np.inf  # label 2 can never be emitted
    res = ctc_align(lp, [[1, 2]], [4], [2])
    assert not res.feasible[0] and res.log_prob[0] == -np.inf and np.all(res.path[0] == -1)
    res = ctc_align(lp, [[1]], [4], [1])
    assert res.feasible[0] and np.isfinite(res.log_prob[0])


def test_nan_frames_give_nan():
    lp = np.log(np.full((2, 4, 3), 1 / 3))
    lp[0, 2, 0] = np.nan
    lp[1, 3, 0] = np.nan  # beyond input_length: ignored
    res = ctc_align(lp, [[1], [1]], [4, 3], [1, 1])
    assert np.isnan(res.log_prob[0]) and not res.feasible[0] and np.all(res.path[0] == -1)
    assert res.feasible[1] and np.isfinite(res.log_prob[1])


@pytest.mark.parametrize("blank", [0, 2, 4])
def test_normalize_and_blank_anywhere(blank):
    rng = np.random.default_rng(13)
    logits = rng.normal(size=(3, 8, 5)) * 3
    labels = np.array([[c for c in (1, 3, 3, 0, 2, 4) if c != blank][:3]] * 3)
    a = ctc_align(logits, labels, [8, 7, 5], [3, 2, 3], blank_index=blank, normalize=True)
    b = ctc_align(log_softmax(logits, axis=2), labels, [8, 7, 5], [3, 2, 3], blank_index=blank)
    np.testing.assert_array_equal(a.path, b.path)
    np.testing.assert_allclose(a.log_prob, b.log_prob, rtol=1e-12)
    for i in range(3):
        assert [s[2] for s in a.segments(i, blank=blank)] == labels[i, : [3, 2, 3][i]].tolist()


def test_list_sparse_and_dense_labels_and_dtypes():
    rng = np.random.default_rng(14)
    lp = log_softmax(rng.normal(size=(2, 9, 4)), axis=2)
    seqs = [np.array([1, 2, 3]), [3, 3]]
    dense = np.array([[1, 2, 3], [3, 3, 0]])
    a = ctc_align(lp, seqs, None, None)
    b = ctc_align(lp, dense, None, [3, 2])
    np.testing.assert_array_equal(a.path, b.path)
    sp = scipy.sparse.csr_matrix((np.array([1, 2, 3, 3, 3]), np.array([0, 1, 2, 0, 1]), np.array([0, 3, 5])),
                                 shape=(2, 4))
    e = ctc_align(lp, sp, None, None)
    np.testing.assert_array_equal(a.path, e.path)
    with pytest.raises(ValueError, match="label_length"):
        ctc_align(lp, sp, None, [3, 2])
    for dt in (np.float16, np.float32):
        c = ctc_align(lp.astype(dt), dense, None, [3, 2])
        d = ctc_align(lp.astype(dt).astype(np.float64), dense, None, [3, 2])
        np.testing.assert_array_equal(c.path, d.path)
        np.testing.assert_array_equal(c.log_prob, d.log_prob)


def test_strided_and_readonly_inputs():
    rng = np.random.default_rng(15)
    big = log_softmax(rng.normal(size=(4, 12, 10)), axis=2)
    view = big[::-1, ::2, ::2]  # negative and non-unit strides, class axis not contiguous
    view.flags.writeable = False
    labels = rng.integers(1, 5, size=(4, 2))
    a = ctc_align(view, labels, None, None)
    b = ctc_align(np.ascontiguousarray(view), labels, None, None)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_threads_give_identical_results():
    rng = np.random.default_rng(16)
    lp = log_softmax(rng.normal(size=(31, 40, 12)), axis=2).astype(np.float32)
    labels = rng.integers(1, 12, size=(31, 15))
    ll = rng.integers(0, 16, size=31)
    il = rng.integers(0, 41, size=31)
    base = ctc_align(lp, labels, il, ll, num_threads=1)
    for nt in (2, 3, -1, None):
        res = ctc_align(lp, labels, il, ll, num_threads=nt)
        np.testing.assert_array_equal(res.path, base.path)
        assert res.log_prob.tobytes() == base.log_prob.tobytes()


# ---------------------------------------------------------------------------------------------------- segments


def test_segments_runs_and_repeats():
    #       frame: 0  1  2  3  4  5  6  7
    path = np.array([0, 1, 1, 0, 1, 2, 2, 0])
    assert ctc_segments(path) == [(1, 3, 1), (4, 5, 1), (5, 7, 2)]
    assert ctc_segments([3, 3, 1, 3], blank=3) == [(2, 3, 1)]
    assert ctc_segments(np.array([1, 1, 2, -1, -1])) == [(0, 2, 1), (2, 3, 2)]  # padding ends the path
    assert ctc_segments(np.array([], dtype=np.int64)) == [] == ctc_segments([0, 0, -1])


def test_segments_of_alignments_spell_the_labels():
    rng = np.random.default_rng(17)
    lp = log_softmax(rng.normal(size=(20, 30, 6)), axis=2)
    labels = rng.integers(1, 6, size=(20, 8))
    ll = rng.integers(0, 9, size=20)
    res = ctc_align(lp, labels, None, ll)
    for b in range(20):
        segs = res.segments(b)
        assert [s[2] for s in segs] == labels[b, : ll[b]].tolist()
        for (s0, e0, lab), nxt in zip(segs, segs[1:] + [(30, 30, -1)]):
            assert s0 < e0 <= nxt[0] and np.all(res.path[b, s0:e0] == lab)


@pytest.mark.parametrize("path,exc,match", [
    (np.zeros((2, 3), int), ValueError, "path"),
    (np.zeros(3, float), TypeError, "path"),
])
def test_segments_bad_inputs(path, exc, match):
    with pytest.raises(exc, match=match):
        ctc_segments(path)


# ---------------------------------------------------------------------------------------------------- bad input

LP = np.zeros((2, 5, 4))


@pytest.mark.parametrize("kw,exc,match", [
    (dict(log_probs=np.zeros((5, 4))), ValueError, "log_probs"),
    (dict(log_probs=np.zeros((2, 5, 4), int)), TypeError, "log_probs"),
    (dict(labels=np.array([1, 2])), ValueError, "labels"),
    (dict(labels=np.array([[1, 2]])), ValueError, "labels"),
    (dict(labels=np.array([[1.0, 2.0], [1.0, 2.0]])), TypeError, "labels"),
    (dict(labels=np.array([[1, 4], [1, 2]])), ValueError, r"labels\[0, 1\]"),
    (dict(labels=np.array([[1, 2], [-1, 2]])), ValueError, r"labels\[1, 0\]"),
    (dict(labels=np.array([[1, 2], [1, 0]])), ValueError, "blank"),
    (dict(labels=[[1, 2], [3]], label_length=[2, 1]), ValueError, "label_length"),
    (dict(label_length=[3, 1]), ValueError, r"label_length\[0\]"),
    (dict(label_length=[2, -1]), ValueError, "label_length"),
    (dict(input_length=[6, 5]), ValueError, r"input_length\[0\]"),
    (dict(input_length=[5]), ValueError, "input_length"),
    (dict(input_length=np.array([5.0, 5.0])), TypeError, "input_length"),
    (dict(blank_index=4), ValueError, "blank_index"),
    (dict(blank_index="0"), TypeError, "blank_index"),
    (dict(num_threads=0), ValueError, "num_threads"),
])
def test_align_bad_inputs(kw, exc, match):
    call = dict(log_probs=LP, labels=np.array([[1, 2], [3, 3]]), input_length=[5, 5], label_length=[2, 2])
    call.update(kw)
    with pytest.raises(exc, match=match):
        ctc_align(**call)


def test_result_is_a_named_tuple():
    path, log_prob, feasible = res = ctc_align(LP, [[1], [2]], None, None)
    assert isinstance(res, AlignResult) and res.path is path and res.feasible is feasible
