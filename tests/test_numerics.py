"""Numerics at the extremes: float32 logits of +-1e4, all-equal rows, T up to 10000 and L up to 2000 give the
exact loss (against float64 log-space references written here) or a correctly infinite one; float16 works."""
import math

import numpy as np
import pytest
from scipy.special import log_softmax

import cyctc
from ctc_reference import batch_reference


def ext_states(labels, blank):
    ext = np.full(2 * len(labels) + 1, blank, dtype=np.int64)
    ext[1::2] = labels
    skip = np.zeros(ext.size, bool)
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    return ext, skip


def _shift(a, k):
    out = np.full_like(a, -np.inf)
    out[k:] = a[:-k] if k else a
    return out


def log_alpha(lp, labels, blank=0):
    """float64 log-space forward variables (T, S) of one sequence, vectorised over the S = 2L + 1 states."""
    ext, skip = ext_states(labels, blank)
    T, S = lp.shape[0], ext.size
    la = np.full((T, S), -np.inf)
    la[0, :2] = lp[0, ext[:2]]
    for t in range(1, T):
        a = la[t - 1]
        v = np.logaddexp(a, _shift(a, 1))
        v = np.logaddexp(v, np.where(skip, _shift(a, 2), -np.inf))
        la[t] = v + lp[t, ext]
    return la


def reference_loss(x, labels, blank=0):
    """-log p(labels | x) for one sequence x (T, C), float64 log space, O(S) memory."""
    lp = log_softmax(x.astype(np.float64), axis=1)
    ext, skip = ext_states(labels, blank)
    if lp.shape[0] == 0:
        return 0.0 if len(labels) == 0 else np.inf
    a = np.full(ext.size, -np.inf)
    a[:2] = lp[0, ext[:2]]
    for t in range(1, lp.shape[0]):
        v = np.logaddexp(a, _shift(a, 1))
        a = np.logaddexp(v, np.where(skip, _shift(a, 2), -np.inf)) + lp[t, ext]
    return -np.logaddexp(a[-1], a[-2]) if len(labels) else -a[-1]


def reference_grad(x, labels, blank=0):
    """d loss / d logits (T, C) of one sequence, float64 log-space forward-backward vectorised over states."""
    lp = log_softmax(x.astype(np.float64), axis=1)
    ext, skip = ext_states(labels, blank)
    la = log_alpha(lp, labels, blank)
    lb = _log_beta(lp, ext, skip)
    logp = np.logaddexp(la[-1, -1], la[-1, -2]) if len(labels) else la[-1, -1]
    post = np.exp(la + lb - logp)
    occ = np.zeros_like(lp)
    np.add.at(occ.T, ext, post.T)
    return np.exp(lp) - occ


def _log_beta(lp, ext, skip):
    T, S = lp.shape[0], ext.size
    lb = np.full((T, S), -np.inf)
    lb[T - 1, S - 1] = 0.0
    if S > 1:
        lb[T - 1, S - 2] = 0.0
    skip_from = np.zeros(S, bool)  # state s may jump to s + 2
    skip_from[:-2] = skip[2:]
    for t in range(T - 2, -1, -1):
        e = lb[t + 1] + lp[t + 1, ext]
        v = np.logaddexp(e, np.concatenate([e[1:], [-np.inf]]))
        lb[t] = np.logaddexp(v, np.where(skip_from, np.concatenate([e[2:], [-np.inf, -np.inf]]), -np.inf))
    return lb


def count_alignments(labels, T):
    """Exact number of frame paths of length T that collapse to labels (Python integers)."""
    ext, skip = ext_states(labels, -1)
    S = ext.size
    n = [0] * S
    n[0] = 1
    if S > 1:
        n[1] = 1
    for _ in range(1, T):
        n = [n[s] + (n[s - 1] if s >= 1 else 0) + (n[s - 2] if skip[s] else 0) for s in range(S)]
    return n[-1] + (n[-2] if S > 1 else 0)


# ----------------------------------------------------------------------------------------------- +-1e4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_of_plus_minus_1e4_are_exact(dtype):
    rng = np.random.default_rng(1)
    B, T, C, L = 6, 14, 5, 5
    x = rng.choice([-1e4, 1e4, 0.0], size=(B, T, C)).astype(dtype)
    x[1] += rng.standard_normal((T, C)).astype(dtype)  # near-ties
    x[2, :, 0] = 1e4  # the blank dominates every frame: labels cost ~2e4 each
    labels = rng.integers(1, C, size=(B, L)).astype(np.int32)
    ll = np.array([5, 4, 3, 5, 0, 2], np.int32)
    tl = np.array([14, 14, 14, 12, 14, 1], np.int32)  # the last example is infeasible
    loss, grad = cyctc.ctc_loss(labels, x, ll, tl, False, return_grad=True)
    ref_l, ref_g = batch_reference(x.astype(np.float64), labels, ll, tl, 0)
    assert np.isposinf(loss[5]) and np.isposinf(ref_l[5]) and np.all(grad[5] == 0)
    assert np.all(np.isfinite(loss[:5])) and loss[:5].max() > 2e4  # labels paying ~2e4 nats a frame
    np.testing.assert_allclose(loss[:5], ref_l[:5], rtol=1e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(grad, ref_g, atol=1e-6 if dtype == np.float32 else 1e-10)  # |logits| 1e4: 1e-12 ulps
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("value", [0.0, 1e4, -1e4])
def test_all_equal_rows_give_the_counting_formula(dtype, value):
    """Equal logits in every row: p(labels) = (#alignments) / C**T, counted exactly with integers."""
    T, C = 40, 7
    cases = [[], [1], [2, 2], [1, 2, 3, 4, 5], [3, 3, 3, 3], list(range(1, 7)) * 3]
    B, L = len(cases), max(len(c) for c in cases)
    labels = np.zeros((B, L), np.int32)
    for b, c in enumerate(cases):
        labels[b, :len(c)] = c
    ll = np.array([len(c) for c in cases], np.int32)
    x = np.full((B, T, C), value, dtype=dtype)
    loss, grad = cyctc.ctc_loss(labels, x, ll, None, False, return_grad=True)
    want = np.array([T * math.log(C) - math.log(count_alignments(c, T)) for c in cases])
    rtol = {np.float16: 1e-3, np.float32: 1e-6, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(loss.astype(np.float64), want, rtol=rtol)
    assert np.all(np.abs(grad.astype(np.float64).sum(axis=2)) < 50 * rtol)


# ----------------------------------------------------------------------------------------------- long sequences


def test_T10000_L2000_float32_is_exact():
    rng = np.random.default_rng(2)
    T, L, C = 10000, 2000, 30
    x = rng.standard_normal((2, T, C)).astype(np.float32)
    labels = rng.integers(1, C, size=(2, L)).astype(np.int32)
    need = L + int(np.sum(labels[1, 1:] == labels[1, :-1]))
    tl = np.array([T, need - 1], np.int32)  # the second one is one frame short: infeasible
    loss = cyctc.ctc_loss(labels, x, [L, L], tl, False)
    assert np.isposinf(loss[1])
    np.testing.assert_allclose(loss[0], reference_loss(x[0], labels[0]), rtol=1e-6)


def test_T10000_L2000_peaked_float32_is_exact():
    """+-1e4 logits over 10000 frames: a loss near 1e7, far outside any linear-space range, still exact."""
    rng = np.random.default_rng(3)
    T, L, C = 10000, 2000, 6
    x = rng.choice([-1e4, 0.0, 1e4], size=(1, T, C)).astype(np.float32)
    labels = rng.integers(1, C, size=(1, L)).astype(np.int32)
    loss = cyctc.ctc_loss(labels, x, [L], None, False)
    ref = reference_loss(x[0], labels[0])
    assert np.isfinite(loss[0]) and ref > 1e6
    np.testing.assert_allclose(loss[0], ref, rtol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_long_gradient_is_exact(scale):
    rng = np.random.default_rng(4)
    T, L, C = 2000, 400, 12
    x = (rng.standard_normal((1, T, C)) * scale).astype(np.float32)
    labels = rng.integers(1, C, size=(1, L)).astype(np.int32)
    loss, grad = cyctc.ctc_loss(labels, x, [L], None, False, return_grad=True)
    np.testing.assert_allclose(loss[0], reference_loss(x[0], labels[0]), rtol=1e-6)
    ref_g = reference_grad(x[0], labels[0])
    np.testing.assert_allclose(grad[0], ref_g, atol=2e-6)
    assert np.all(np.abs(grad[0].astype(np.float64).sum(axis=1)) < 1e-5)


def test_peaked_minimal_length_gradient_regression():
    """Peaked logits with logit_length == labels + repeats (a single alignment): the stage-2 pass flags the
    sequence, which must then be recomputed in log space (it once was not, leaving frames with occupancy 2)."""
    x = np.array([[31.27, 12.305, 135.9], [-43.3, 77.2, 166.1], [-15.02, -45.47, 15.59], [72.06, 148.4, -170.9],
                  [-165.1, 7.676, 27.34], [-2.475, -99.06, 191.5], [57.1, -45.56, 199.9]])[None]
    labels = np.array([[1, 2, 2, 1, 1]], np.int32)
    for dtype in (np.float16, np.float32, np.float64):
        loss, grad = cyctc.ctc_loss(labels, x.astype(dtype), [5], [7], False, return_grad=True)
        ref_l, ref_g = batch_reference(x.astype(dtype).astype(np.float64), labels, [5], [7], 0)
        np.testing.assert_allclose(loss.astype(np.float64), ref_l, rtol=1e-3 if dtype == np.float16 else 1e-6)
        np.testing.assert_allclose(grad.astype(np.float64), ref_g, atol=1e-3 if dtype == np.float16 else 1e-6)


# ----------------------------------------------------------------------------------------------- float16


def test_float16_works_everywhere():
    rng = np.random.default_rng(5)
    B, T, C = 3, 30, 6
    x16 = (rng.standard_normal((T, B, C)) * 3).astype(np.float16)
    x32 = x16.astype(np.float32)
    labels = rng.integers(1, C - 1, size=(B, 6)).astype(np.int32)
    ll = np.array([6, 3, 0], np.int32)
    l16, g16 = cyctc.ctc_loss(labels, x16, ll, None, return_grad=True)
    l32, g32 = cyctc.ctc_loss(labels, x32, ll, None, return_grad=True)
    assert l16.dtype == g16.dtype == np.float16
    assert np.array_equal(l16, l32.astype(np.float16)) and np.array_equal(g16, g32.astype(np.float16))
    assert np.all(np.abs(g16.astype(np.float64).sum(axis=2)) < 5e-3)
    # a loss beyond float16's range rounds to inf as IEEE rounding says; the gradient stays finite
    big = np.full((T, 1, C), -1e4, np.float16)
    big[:, 0, C - 1] = 1e4
    lb, gb = cyctc.ctc_loss(labels[:1], big, ll[:1], None, return_grad=True)
    lb32 = cyctc.ctc_loss(labels[:1], big.astype(np.float32), ll[:1], None)
    assert lb32[0] > 65504 and np.isposinf(lb[0]) and np.all(np.isfinite(gb))
    # TF1 / Keras / decoders / alignment: float16 answers equal the float32 ones rounded
    lv = cyctc.ctc_loss_v1(labels - 1, x16, np.full(B, T), label_length=ll)
    assert lv.dtype == np.float16 and np.array_equal(lv, cyctc.ctc_loss_v1(labels - 1, x32, np.full(B, T),
                                                                          label_length=ll).astype(np.float16))
    p16 = np.exp(log_softmax(x32.swapaxes(0, 1), axis=2)).astype(np.float16)
    kb = cyctc.ctc_batch_cost(labels - 1, p16, np.full(B, T), ll)
    assert kb.dtype == np.float16 and np.all(np.isfinite(kb))
    # decoders answer float16 scores in float32 (as TF): the float32 ones exactly
    g = cyctc.ctc_greedy_decoder(x16, None)
    g32 = cyctc.ctc_greedy_decoder(x32, None)
    assert g.neg_sum_logits.dtype == np.float32 and np.array_equal(g.neg_sum_logits, g32.neg_sum_logits)
    assert np.array_equal(g.decoded[0].values, g32.decoded[0].values)
    r = cyctc.ctc_beam_search_decoder(x16, None, 5, 2)
    r32 = cyctc.ctc_beam_search_decoder(x32, None, 5, 2)
    assert r.log_probabilities.dtype == np.float32
    assert np.array_equal(r.log_probabilities, r32.log_probabilities)
    a = cyctc.ctc_align(x16, labels, None, ll, time_major=True, normalize=True)
    a32 = cyctc.ctc_align(x32, labels, None, ll, time_major=True, normalize=True)
    assert np.array_equal(a.path, a32.path) and np.array_equal(a.log_prob, a32.log_prob)


def test_extreme_inputs_in_decoders_and_alignment():
    rng = np.random.default_rng(6)
    B, T, C = 3, 20, 5
    x = rng.choice([-1e4, 0.0, 1e4], size=(B, T, C)).astype(np.float32)
    labels = rng.integers(0, C - 1, size=(B, 4))
    g = cyctc.ctc_greedy_decoder(x, None, time_major=False)
    np.testing.assert_allclose(g.neg_sum_logits[:, 0], -x.max(axis=2).sum(axis=1), rtol=1e-7)
    r = cyctc.ctc_beam_search_decoder(x, None, 6, 3, time_major=False)
    assert np.all(np.isfinite(r.log_probabilities[:, 0])) and np.all(r.log_probabilities <= 0)
    a = cyctc.ctc_align(x, labels, None, None, blank_index=-1, normalize=True)
    lp = log_softmax(x.astype(np.float64), axis=2)
    for b in range(B):
        assert a.feasible[b]
        np.testing.assert_allclose(a.log_prob[b], lp[b, np.arange(T), a.path[b]].sum(), rtol=1e-12)
