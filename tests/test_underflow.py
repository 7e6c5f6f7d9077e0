"""The scaled recursion cannot lose a state to underflow unnoticed (issue 13, items 0-2).

A state far below its row's maximum times a small class probability underflows, although each factor alone passes
any floor check, and that state may carry the best path later (a confident, wrong model). Every entry point must
then still return the exact loss, loss-only calls included, and a loss-only call must return exactly the loss of the
gradient call. Checked here against an independent float64 log-space reference (tests/ctc_reference.py) on random
inputs drawn where this happens: peaked logits (temperatures 0.1 to 3000), one-hot probabilities (Keras), logits on a
coarse grid (exact ties between paths) and equal rows; plus the issue's reproducers, shift invariance at any
magnitude and very negative logits.
"""
import numpy as np
import pytest
import scipy.sparse as sp

import cyctc
from ctc_reference import ctc_logspace

N_CASES = 400  # per family and entry point; each case is a tiny problem


def _labels_for(rng, C, blank, T):
    classes = [c for c in range(C) if c != blank]
    L = int(rng.integers(0, min(3, T) + 1))
    return np.array([classes[i] for i in rng.integers(0, len(classes), size=L)], dtype=np.int32)


def _logits(rng, family, T, C):
    if family == "temperature":
        temp = float(np.exp(rng.uniform(np.log(0.1), np.log(3000.0))))
        return rng.standard_normal((T, C)) * temp
    if family == "coarse":  # a coarse grid: many paths tie exactly
        return rng.integers(-3, 4, size=(T, C)).astype(np.float64) * 300.0
    if family == "onehot":  # log of one-hot probabilities plus Keras's epsilon: a confident model
        y = np.eye(C)[rng.integers(0, C, size=T)]
        return np.log(y + 1e-7)
    if family == "equal":  # every frame the same peaked row
        return np.repeat(rng.standard_normal((1, C)) * rng.choice([1.0, 100.0, 1000.0]), T, axis=0)
    raise ValueError(family)


def _case(rng, family):
    T = int(rng.integers(1, 13))
    C = int(rng.integers(2, 6))
    blank = int(rng.integers(0, C))
    x = _logits(rng, family, T, C)
    lab = _labels_for(rng, C, blank, T)
    return x, lab, blank


def _check(loss_only, loss, grad, x, lab, blank, merge=True):
    ref_loss, ref_grad = ctc_logspace(x, lab, blank, merge)
    assert loss_only == loss  # bit for bit: the loss-only call returns the gradient call's loss
    if np.isinf(ref_loss):
        assert np.isinf(loss)
        return
    assert loss == pytest.approx(ref_loss, rel=1e-11, abs=1e-9)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-9)


@pytest.mark.parametrize("family", ["temperature", "coarse", "onehot", "equal"])
def test_ctc_loss_random(family):
    rng = np.random.default_rng(["temperature", "coarse", "onehot", "equal"].index(family))
    for _ in range(N_CASES):
        x, lab, blank = _case(rng, family)
        T = x.shape[0]
        args = (lab[None, :] if len(lab) else np.zeros((1, 1), np.int32), x[:, None, :], [len(lab)], [T])
        lo = cyctc.ctc_loss(*args, blank_index=blank)[0]
        lg, g = cyctc.ctc_loss(*args, blank_index=blank, return_grad=True)
        _check(lo, lg[0], g[:, 0, :], x, lab, blank)


def _collapse(lab):
    return np.array([v for i, v in enumerate(lab) if i == 0 or v != lab[i - 1]], dtype=np.int32)


@pytest.mark.parametrize("family", ["temperature", "coarse", "onehot"])
@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("collapse", [False, True])
def test_ctc_loss_v1_random(family, merge, collapse):
    rng = np.random.default_rng([7, 8, 9][["temperature", "coarse", "onehot"].index(family)] + 10 * merge + 100 * collapse)
    for _ in range(N_CASES // 4):
        T = int(rng.integers(1, 13))
        C = int(rng.integers(2, 6))
        x = _logits(rng, family, T, C)
        lab = _labels_for(rng, C, C - 1, T)
        labels = sp.coo_matrix((lab, (np.zeros(len(lab), int), np.arange(len(lab)))), shape=(1, max(len(lab), 1)))
        kw = dict(preprocess_collapse_repeated=collapse, ctc_merge_repeated=merge,
                  ignore_longer_outputs_than_inputs=True)
        lo = cyctc.ctc_loss_v1(labels, x[:, None, :], [T], **kw)[0]
        lg, g = cyctc.ctc_loss_v1(labels, x[:, None, :], [T], return_grad=True, **kw)
        if len(lab) > T:  # ignored example: 0 and 0
            assert lo == lg[0] == 0.0 and not g.any()
            continue
        ref_lab = _collapse(lab) if collapse else lab
        _check(lo, lg[0], g[:, 0, :], x, ref_lab, C - 1, merge)


@pytest.mark.parametrize("family", ["onehot", "temperature"])
def test_ctc_batch_cost_random(family):
    rng = np.random.default_rng(21 + (family == "onehot"))
    for _ in range(N_CASES // 2):
        T = int(rng.integers(1, 13))
        C = int(rng.integers(2, 6))
        if family == "onehot":
            y = np.eye(C)[rng.integers(0, C, size=T)]
        else:
            z = _logits(rng, "temperature", T, C)
            y = np.exp(z - z.max(axis=1, keepdims=True))
            y /= y.sum(axis=1, keepdims=True)
        lab = _labels_for(rng, C, C - 1, T)
        y_true = lab[None, :] if len(lab) else np.zeros((1, 1), np.int32)
        lo = cyctc.ctc_batch_cost(y_true, y[None], [[T]], [[len(lab)]])[0, 0]
        lg, g = cyctc.ctc_batch_cost(y_true, y[None], [[T]], [[len(lab)]], return_grad=True)
        # Keras's rule: TF1 CTC on log(y + 1e-7), gradient w.r.t. y by the chain rule
        zs = np.log(y + 1e-7)
        ref_loss, ref_gz = ctc_logspace(zs, lab, C - 1)
        assert lo == lg[0, 0]
        assert lg[0, 0] == pytest.approx(ref_loss, rel=1e-11, abs=1e-9)
        np.testing.assert_allclose(g[0], ref_gz / (y + 1e-7), rtol=1e-9, atol=1e-6)


# ---- the issue's reproducers ------------------------------------------------------------------------------------

ISSUE_LOGITS = np.array([
    [187.292, -308.093, 133.245, -248.7], [-121.211, 192.276, -13.805, -113.947],
    [-69.146, -320.739, 238.4, 428.951], [191.474, -101.569, 14.989, 152.551],
    [273.506, 109.306, -197.408, -131.477], [-422.437, -193.609, -259.169, 127.967],
    [-276.368, 242.886, -8.738, -73.873], [16.32, -30.761, -477.759, 170.307],
    [-99.03, 103.508, 427.885, -202.38], [358.645, -132.95, 87.087, -280.634],
    [-129.116, -57.678, 26.461, 85.819]])


@pytest.mark.parametrize("nthreads", [1, 2])
def test_issue_case_ctc_loss(nthreads):
    ref = ctc_logspace(ISSUE_LOGITS, [3], 0)[0]
    assert ref == pytest.approx(1808.73730, abs=1e-5)
    lo = cyctc.ctc_loss(np.array([[3]]), ISSUE_LOGITS[:, None, :], [1], [11], num_threads=nthreads)[0]
    assert lo == pytest.approx(ref, rel=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_issue_case_keras_confidently_wrong(dtype):
    y = np.eye(3)[[0] * 50 + [1] * 60 + [0] * 60][None].astype(dtype)
    ref = ctc_logspace(np.log(y[0].astype(np.float64) + dtype(1e-7)), [1, 0], 2)[0]
    assert ref == pytest.approx(801.9730, abs=1e-4)
    lo = cyctc.ctc_batch_cost([[1, 0]], y, [[170]], [[2]])[0, 0]
    assert lo == pytest.approx(ref, rel=1e-12 if dtype == np.float64 else 1e-6)


def test_issue_case_v1_merge_modes():
    one = sp.coo_matrix(([0], ([0], [0])), shape=(1, 1))
    x = np.array([[0, -600], [300, 0], [1200, 601]], float)
    got = cyctc.ctc_loss_v1(one, x[:, None, :], [3], ctc_merge_repeated=False)[0]
    assert got == pytest.approx(ctc_logspace(x, [0], 1, merge_repeated=False)[0], rel=1e-13)
    assert got == pytest.approx(898.6867, abs=1e-4)
    x = np.array([[601, 1], [300, 600], [301, 0], [0, 601], [600, 1]], float)
    got = cyctc.ctc_loss_v1(one, x[:, None, :], [5])[0]
    assert got == pytest.approx(ctc_logspace(x, [0], 1)[0], rel=1e-13)
    assert got == pytest.approx(898.5062, abs=1e-4)


def test_issue_case_tied_masses_gradient():
    x = np.array([[0, 600], [300, -300], [-300, 0], [300, 0], [0, 600]], float)
    loss, g = cyctc.ctc_loss(np.array([[1]]), x[:, None, :], [1], [5], return_grad=True)
    assert loss[0] == pytest.approx(898.6137056388801, rel=1e-13)
    np.testing.assert_allclose(g[:, 0, 0], [-.5, .25, -.5, .5, -.25], atol=1e-12)
    one = sp.coo_matrix(([0], ([0], [0])), shape=(1, 1))
    x = np.array([[0, -600], [300, 0], [1200, 600]], float)
    got = cyctc.ctc_loss_v1(one, x[:, None, :], [3], ctc_merge_repeated=False, return_grad=True)[0][0]
    assert got == pytest.approx(900 - np.log(2), rel=1e-13)


# ---- item 1: shift invariance at any magnitude --------------------------------------------------------------------

@pytest.mark.parametrize("value", [1e30, -1e30, 1e300, 3e38])
def test_equal_huge_logits_are_uniform(value):
    x = np.full((6, 1, 4), value)
    loss, g = cyctc.ctc_loss(np.array([[1, 2]]), x, [2], [6], return_grad=True)
    ref_loss, ref_grad = ctc_logspace(np.zeros((6, 4)), [1, 2], 0)
    assert loss[0] == pytest.approx(ref_loss, rel=1e-14)
    np.testing.assert_allclose(g[:, 0], ref_grad, atol=1e-14)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    if np.isfinite(x32).all():
        assert cyctc.ctc_loss(np.array([[1, 2]]), x32, [2], [6])[0] == pytest.approx(ref_loss, rel=1e-6)


@pytest.mark.parametrize("shift", [1e4, 1e8, 1e12, -1e8])
def test_shifted_logits_keep_float64_accuracy(shift):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 3, 7))
    labels = np.array([[1, 2, 3], [4, 4, 0], [6, 0, 0]])
    ll, tl = [3, 2, 1], [40, 33, 20]
    xs = (x + shift)
    delta = xs - shift  # the logits actually given, seen from the shift: the reference takes them exactly
    ref = np.array([ctc_logspace(delta[:tl[b], b], labels[b, :ll[b]], 0)[0] for b in range(3)])
    got, gs = cyctc.ctc_loss(labels, xs, ll, tl, return_grad=True)
    np.testing.assert_allclose(got, ref, rtol=5e-15)
    for b in range(3):
        np.testing.assert_allclose(gs[:tl[b], b], ctc_logspace(delta[:tl[b], b], labels[b, :ll[b]], 0)[1],
                                   atol=1e-13)


# ---- item 2: very negative logits ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value,dtype", [(v, np.float64) for v in (-1e10, -1e30, -1e300, -np.inf)]
                         + [(v, np.float32) for v in (-1e10, -1e30, -np.inf)])
def test_very_negative_logits_gradient(value, dtype):
    """Non-blank logits far below the blank: every path emits the label the fewest times it can, and the exact
    posteriors follow from the other (finite) logits alone. A stand-in of -2000 gives the same limit to within
    e^-2000, so the log-space reference on it is the exact answer."""
    rng = np.random.default_rng(5)
    blankcol = rng.standard_normal(6)
    x = np.full((6, 4), value)
    x[:, 0] = blankcol
    x = x.astype(dtype)
    loss, g = cyctc.ctc_loss(np.array([[1]]), x[:, None, :], [1], [6], return_grad=True)
    if value == -np.inf:  # probability exactly 0: no alignment exists, +inf with a zero gradient (documented)
        assert loss[0] == np.inf and not g.any()
        return
    stand_in = np.full((6, 4), -2000.0)
    stand_in[:, 0] = x[:, 0]
    ref_loss, ref_grad = ctc_logspace(stand_in, [1], 0)
    np.testing.assert_allclose(g[:, 0].sum(axis=1), 0.0, atol=1e-6 if dtype == np.float32 else 1e-15)
    np.testing.assert_allclose(g[:, 0], ref_grad, atol=1e-6 if dtype == np.float32 else 1e-14)
    assert loss[0] == pytest.approx(-float(x[0, 1]) + ref_loss - 2000.0, rel=1e-6 if dtype == np.float32 else 1e-14)


def test_very_negative_logits_uniform_blank_exact_sixths():
    """The issue's figure: blank logits 0, the rest at -1e30, one label over 6 frames: blank column +1/6,
    label column -1/6 on every frame."""
    x = np.full((6, 1, 4), -1e30)
    x[:, :, 0] = 0.0
    _, g = cyctc.ctc_loss(np.array([[1]]), x, [1], [6], return_grad=True)
    np.testing.assert_allclose(g[:, 0, 0], 1 / 6, atol=1e-15)
    np.testing.assert_allclose(g[:, 0, 1], -1 / 6, atol=1e-15)
    np.testing.assert_allclose(g[:, 0, 2:], 0.0, atol=0)
