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

N_BATCH = 6000  # random cases per family and entry point, in one batched call each


def batched_logspace(logp, labels, label_length, logit_length, blank, merge_repeated=True):
    """Exact -log p and its gradient w.r.t. the log-probabilities' logits for a padded batch, float64 log space,
    vectorised over the batch (the same definitions as ctc_reference.ctc_logspace, for many tiny problems at once).

    logp: (B, T, C) log-probabilities (log_softmax already applied); labels (B, Lmax); returns loss (B,) and the
    gradient softmax - occupancy (B, T, C), 0 past logit_length."""
    B, T, C = logp.shape
    Lmax = labels.shape[1]
    S = 2 * Lmax + 1
    ext = np.full((B, S), blank, dtype=np.int64)
    ext[:, 1::2] = labels
    s_idx = np.arange(S)
    valid_s = s_idx[None, :] < 2 * label_length[:, None] + 1
    is_lab = (s_idx % 2 == 1)[None, :] & valid_s
    stay = np.where(is_lab, merge_repeated, True)
    prev2 = np.concatenate([np.full((B, 2), -1), ext[:, :-2]], axis=1)
    skip = is_lab & (s_idx[None, :] >= 2)
    if merge_repeated:
        skip &= ext != prev2
    emit = np.take_along_axis(logp, np.broadcast_to(ext[:, None, :], (B, T, S)), axis=2)  # (B, T, S)
    emit = np.where(valid_s[:, None, :], emit, -np.inf)
    ninf = np.full((B, 1), -np.inf)
    la = np.full((B, T, S), -np.inf)
    la[:, 0, :2] = emit[:, 0, :2]
    for t in range(1, T):
        p = la[:, t - 1]
        v = np.where(stay, p, -np.inf)
        v = np.logaddexp(v, np.concatenate([ninf, p[:, :-1]], axis=1))
        v = np.logaddexp(v, np.where(skip, np.concatenate([ninf, ninf, p[:, :-2]], axis=1), -np.inf))
        la[:, t] = v + emit[:, t]
    lb = np.full((B, T, S), -np.inf)
    last = logit_length - 1
    end1 = 2 * label_length
    end2 = np.maximum(2 * label_length - 1, 0)
    for b in range(B):
        if logit_length[b] > 0:
            lb[b, last[b], end1[b]] = 0.0
            if label_length[b] > 0:
                lb[b, last[b], end2[b]] = 0.0
    for t in range(T - 2, -1, -1):
        n = lb[:, t + 1] + emit[:, t + 1]
        v = np.where(stay, n, -np.inf)
        v = np.logaddexp(v, np.concatenate([n[:, 1:], ninf], axis=1))
        sk = np.concatenate([skip[:, 2:], np.zeros((B, 2), bool)], axis=1)
        v = np.logaddexp(v, np.where(sk, np.concatenate([n[:, 2:], ninf, ninf], axis=1), -np.inf))
        active = (t < last)[:, None]
        lb[:, t] = np.where(active, v, lb[:, t])
    b_idx = np.arange(B)
    fin = la[b_idx, np.maximum(last, 0)]
    logP = np.logaddexp(fin[b_idx, end1], np.where(label_length > 0, fin[b_idx, end2], -np.inf))
    loss = -logP
    with np.errstate(invalid="ignore"):
        post = np.exp(la + lb - logP[:, None, None])
    post = np.where(np.isfinite(logP)[:, None, None], np.nan_to_num(post), 0.0)
    occ = np.zeros((B, T, C))
    for s in range(S):
        np.add.at(occ, (b_idx[:, None], np.arange(T)[None, :], np.broadcast_to(ext[:, s:s + 1], (B, T))), post[:, :, s])
    grad = np.exp(logp) - occ
    frames = np.arange(T)[None, :, None] < logit_length[:, None, None]
    grad = np.where(frames & np.isfinite(logP)[:, None, None], grad, 0.0)
    return loss, grad


def _logits(rng, family, B, T, C):
    if family == "temperature":  # peaked logits, temperatures 0.1 to 3000
        temp = np.exp(rng.uniform(np.log(0.1), np.log(3000.0), size=(B, 1, 1)))
        return rng.standard_normal((B, T, C)) * temp
    if family == "coarse":  # a coarse grid: many paths tie exactly
        return rng.integers(-3, 4, size=(B, T, C)).astype(np.float64) * 300.0
    if family == "onehot":  # log of one-hot probabilities plus Keras's epsilon: a confident model
        y = np.eye(C)[rng.integers(0, C, size=(B, T))]
        return np.log(y + 1e-7)
    if family == "equal":  # every frame the same peaked row
        row = rng.standard_normal((B, 1, C)) * rng.choice([1.0, 100.0, 1000.0], size=(B, 1, 1))
        return np.repeat(row, T, axis=1)
    raise ValueError(family)


def _batch(rng, family, C, blank, merge_repeated=True, T=11, Lmax=3):
    """N_BATCH random problems of C classes: logits (B, T, C), labels avoiding the blank, feasible lengths."""
    B = N_BATCH
    x = _logits(rng, family, B, T, C)
    classes = np.array([c for c in range(C) if c != blank])
    labels = classes[rng.integers(0, len(classes), size=(B, Lmax))].astype(np.int32)
    ll = rng.integers(0, Lmax + 1, size=B).astype(np.int32)
    labels[np.arange(Lmax)[None, :] >= ll[:, None]] = 0
    need = ll + (np.sum((labels[:, 1:] == labels[:, :-1]) & (np.arange(1, Lmax)[None, :] < ll[:, None]), axis=1)
                 if merge_repeated else 0)
    tl = np.maximum(need, rng.integers(1, T + 1, size=B)).astype(np.int32)
    return x, labels, ll, tl


def _log_softmax(x):
    m = x.max(axis=2, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=2, keepdims=True))


def _check(loss_only, loss, grad, ref_loss, ref_grad, what):
    np.testing.assert_array_equal(loss_only, loss, err_msg=f"{what}: loss-only call != gradient call's loss")
    fin = np.isfinite(ref_loss)
    assert np.array_equal(np.isinf(loss), ~fin), what
    bad = ~np.isclose(loss[fin], ref_loss[fin], rtol=1e-11, atol=1e-9)
    assert not bad.any(), f"{what}: {bad.sum()} wrong losses, e.g. {loss[fin][bad][:3]} vs {ref_loss[fin][bad][:3]}"
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-9, err_msg=what)


@pytest.mark.parametrize("family", ["temperature", "coarse", "onehot", "equal"])
def test_ctc_loss_random(family):
    rng = np.random.default_rng(["temperature", "coarse", "onehot", "equal"].index(family))
    for C, blank in ((4, 0), (3, 2), (5, 1)):
        x, labels, ll, tl = _batch(rng, family, C, blank)
        lo = cyctc.ctc_loss(labels, x, ll, tl, logits_time_major=False, blank_index=blank)
        lg, g = cyctc.ctc_loss(labels, x, ll, tl, logits_time_major=False, blank_index=blank, return_grad=True)
        ref_loss, ref_grad = batched_logspace(_log_softmax(x), labels, ll, tl, blank)
        _check(lo, lg, g, ref_loss, ref_grad, f"ctc_loss {family} C={C}")


@pytest.mark.parametrize("family", ["temperature", "coarse", "onehot"])
@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("collapse", [False, True])
def test_ctc_loss_v1_random(family, merge, collapse):
    rng = np.random.default_rng(["temperature", "coarse", "onehot"].index(family) + 10 * merge + 100 * collapse)
    C = 4
    x, labels, ll, tl = _batch(rng, family, C, C - 1, merge_repeated=merge and not collapse)
    coo = sp.coo_matrix(labels * (np.arange(labels.shape[1])[None, :] < ll[:, None]))
    # sparse labels: stored entries are the labels (explicit zeros included), so build them entry by entry
    rows, cols = np.nonzero(np.arange(labels.shape[1])[None, :] < ll[:, None])
    coo = sp.coo_matrix((labels[rows, cols], (rows, cols)), shape=labels.shape)
    kw = dict(preprocess_collapse_repeated=collapse, ctc_merge_repeated=merge, time_major=False)
    lo = cyctc.ctc_loss_v1(coo, x, tl, **kw)
    lg, g = cyctc.ctc_loss_v1(coo, x, tl, return_grad=True, **kw)
    ref_labels, ref_ll = labels.copy(), ll.copy()
    if collapse:
        for b in range(len(ll)):
            seq = [v for i, v in enumerate(labels[b, :ll[b]]) if i == 0 or v != labels[b, i - 1]]
            ref_labels[b] = 0
            ref_labels[b, :len(seq)] = seq
            ref_ll[b] = len(seq)
    ref_loss, ref_grad = batched_logspace(_log_softmax(x), ref_labels, ref_ll, tl, C - 1, merge)
    _check(lo, lg, g, ref_loss, ref_grad, f"ctc_loss_v1 {family} merge={merge} collapse={collapse}")


def _runs(rng, B, T, C):
    """One-hot probabilities in three long runs of classes (blank = C - 1 included), and labels drawn from the
    run classes in another order: a confident model, wrong about the labels (the issue's Keras case is one)."""
    y = np.zeros((B, T, C))
    labels = np.zeros((B, 2), dtype=np.int32)
    for b in range(B):
        cuts = np.sort(rng.choice(np.arange(5, T - 5), size=2, replace=False))
        runs = rng.integers(0, C, size=3)
        for r, (lo, hi) in zip(runs, ((0, cuts[0]), (cuts[0], cuts[1]), (cuts[1], T))):
            y[b, lo:hi, r] = 1.0
        labels[b] = rng.integers(0, C - 1, size=2)
    return y, labels


@pytest.mark.parametrize("family", ["onehot", "temperature", "runs"])
def test_ctc_batch_cost_random(family):
    rng = np.random.default_rng(21 + ["onehot", "temperature", "runs"].index(family))
    C = 3
    if family == "runs":
        y, labels = _runs(rng, 2000, 170, C)
        ll = rng.integers(1, 3, size=2000).astype(np.int32)
        labels[ll == 1, 1] = 0
        tl = rng.integers(100, 171, size=2000).astype(np.int32)
    else:
        z, labels, ll, tl = _batch(rng, family, C, C - 1)
        y = np.exp(_log_softmax(z)) if family == "temperature" else np.exp(z) - 1e-7  # one-hot rows back
    lo = cyctc.ctc_batch_cost(labels, y, tl[:, None], ll[:, None])[:, 0]
    lg, g = cyctc.ctc_batch_cost(labels, y, tl[:, None], ll[:, None], return_grad=True)
    # Keras's rule: TF1 CTC on log(y + 1e-7), gradient w.r.t. y by the chain rule
    zs = np.log(y + 1e-7)
    ref_loss, ref_gz = batched_logspace(_log_softmax(zs), labels, ll, tl, C - 1)
    np.testing.assert_array_equal(lo, lg[:, 0])
    fin = np.isfinite(ref_loss)
    np.testing.assert_allclose(lg[fin, 0], ref_loss[fin], rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(g, ref_gz / (y + 1e-7), rtol=1e-9, atol=1e-6)


def test_reference_agrees_with_the_slow_one():
    """The batched reference above against tests/ctc_reference.ctc_logspace on a few cases of each family."""
    rng = np.random.default_rng(99)
    for family in ("temperature", "coarse", "onehot", "equal"):
        for merge in (True, False):
            x, labels, ll, tl = _batch(rng, family, 4, 1, merge_repeated=merge)
            x, labels, ll, tl = x[:25], labels[:25], ll[:25], tl[:25]
            loss, grad = batched_logspace(_log_softmax(x), labels, ll, tl, 1, merge)
            for b in range(25):
                rl, rg = ctc_logspace(x[b, :tl[b]], labels[b, :ll[b]], 1, merge)
                assert loss[b] == pytest.approx(rl, rel=1e-12, abs=1e-12)
                np.testing.assert_allclose(grad[b, :tl[b]], rg, atol=1e-12)


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


@pytest.mark.parametrize("scale,dtype", [(3e38, np.float32), (1e30, np.float64), (1e300, np.float64),
                                         (1e10, np.float64)])
def test_extreme_mixed_logits_exact(scale, dtype):
    """Frames mixing +-scale, +-scale/2 and 0: path scores tie in their huge part and differ by a few nats (log 2
    from tied maxima), which decide the posteriors. Checked against enumeration in 120-digit arithmetic."""
    from ctc_reference import exact_brute_force
    rng = np.random.default_rng(11)
    for _ in range(6):
        x = (rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=(5, 4)) * scale).astype(dtype)
        x[:, 0] = np.maximum(x[:, 0], 0)
        want, want_g = exact_brute_force(x, [1, 2], 0)
        loss, g = cyctc.ctc_loss(np.array([[1, 2]]), x[:, None].astype(np.float64), [2], [5], return_grad=True)
        assert loss[0] == pytest.approx(want, rel=1e-15)
        np.testing.assert_allclose(g[:, 0], want_g, atol=1e-15)
        np.testing.assert_allclose(g[:, 0].sum(axis=1), 0.0, atol=1e-15)
