"""Properties of cyctc.ctc_loss that hold whatever the data: finite differences, invariances, brute force,
thread-count independence, layouts and strides, numerics at the extremes."""
import numpy as np
import pytest
import scipy.sparse as sp

import cyctc
from cyctc import _cpu
from ctc_reference import batch_reference, brute_force, random_problem


def tm(x):
    return np.ascontiguousarray(x.swapaxes(0, 1))


@pytest.mark.parametrize("blank", [0, 3, 6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_logspace_reference(blank, dtype):
    rng = np.random.default_rng(blank)
    x, lab, ll, tl = random_problem(rng, 5, 25, 7, 6, blank=blank, dtype=dtype)
    loss, grad = cyctc.ctc_loss(lab, x, ll, tl, False, blank_index=blank, return_grad=True)
    ref_l, ref_g = batch_reference(x.astype(np.float64), lab, ll, tl, blank)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(loss, ref_l, rtol=tol)
    np.testing.assert_allclose(grad, ref_g, atol=tol)


@pytest.mark.parametrize("merge", [True, False])
def test_kernel_merge_repeated_model(merge):
    """The kernel's merge_repeated=False model (TF1) against the reference, labels with many repeats."""
    rng = np.random.default_rng(7)
    B, T, C = 4, 20, 5
    x = rng.standard_normal((B, T, C))
    lab = np.array([[1, 1, 2, 2, 2, 3], [4, 4, 4, 4, 0, 0], [1, 2, 1, 2, 0, 0], [3, 3, 0, 0, 0, 0]], np.int32)
    lab[lab == 0] = 1
    ll = np.array([6, 4, 4, 2], np.int32)
    tl = np.array([20, 15, 9, 2], np.int32)
    grad = np.empty_like(x)
    loss = _cpu.ctc_loss_grad(x, lab, ll, tl, 0, merge, grad, np.ones(B), 2)
    ref_l, ref_g = batch_reference(x, lab, ll, tl, 0, merge_repeated=merge)
    np.testing.assert_allclose(loss, ref_l, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_g, atol=1e-12)
    if merge:
        assert np.isposinf(loss[3])  # "3 3" needs 3 frames when repeats merge
    else:
        assert np.isfinite(loss[3])


@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("blank", [0, 2])
def test_brute_force_enumeration(merge, blank):
    rng = np.random.default_rng(11 + blank)
    C, T = 3, 6
    labels_list = [[1], [1, 1], [1, 2], [2, 1, 2], []]
    labels_list = [[v if v != blank else 0 for v in lab] for lab in labels_list]
    for lab in labels_list:
        x = rng.standard_normal((1, T, C))
        ref_l, ref_g = brute_force(x[0], lab, blank, merge)
        arr = np.array([lab + [0] * (4 - len(lab))], np.int32)
        grad = np.empty_like(x)
        loss = _cpu.ctc_loss_grad(x, arr, np.array([len(lab)], np.int32), np.array([T], np.int32), blank, merge,
                                  grad, np.ones(1), 1)
        if np.isinf(ref_l):
            assert np.isposinf(loss[0]) and np.all(grad == 0)
        else:
            np.testing.assert_allclose(loss[0], ref_l, rtol=1e-12)
            np.testing.assert_allclose(grad[0], ref_g, atol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_finite_differences(reduction):
    rng = np.random.default_rng(3)
    x, lab, ll, tl = random_problem(rng, 3, 9, 5, 3, blank=1)
    w = rng.standard_normal(3) if reduction == "none" else None

    def f(z):
        out = cyctc.ctc_loss(lab, z, ll, tl, False, blank_index=1, reduction=reduction)
        return float(np.dot(out, w)) if w is not None else float(out)

    _, grad = cyctc.ctc_loss(lab, x, ll, tl, False, blank_index=1, reduction=reduction, return_grad=True)
    if w is not None:
        grad = grad * w[:, None, None]
    eps = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num[i] = (f(xp) - f(xm)) / (2 * eps)
    np.testing.assert_allclose(grad, num, atol=1e-7)


def test_frame_gradient_sums_to_zero():
    rng = np.random.default_rng(5)
    x, lab, ll, tl = random_problem(rng, 6, 40, 11, 10, blank=4)
    _, grad = cyctc.ctc_loss(lab, x, ll, tl, False, blank_index=4, return_grad=True)
    np.testing.assert_allclose(grad.sum(axis=2), 0, atol=1e-13)
    for b in range(6):
        assert np.all(grad[b, tl[b]:] == 0)


def test_padding_contents_do_not_matter():
    rng = np.random.default_rng(6)
    x, lab, ll, tl = random_problem(rng, 4, 30, 9, 8)
    tl[:] = [30, 21, 17, 25]
    loss, grad = cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True)
    x2, lab2 = x.copy(), lab.copy()
    for b in range(4):
        x2[b, tl[b]:] = rng.standard_normal((30 - tl[b], 9)) * 100
        lab2[b, ll[b]:] = rng.integers(-5, 50, size=lab.shape[1] - ll[b])  # garbage padding, even out of range
    loss2, grad2 = cyctc.ctc_loss(lab2, x2, ll, tl, False, return_grad=True)
    assert np.array_equal(loss, loss2) and np.array_equal(grad, grad2)


@pytest.mark.parametrize("fmt", ["coo", "csr", "csc", "coo_array"])
def test_dense_equals_sparse(fmt):
    rng = np.random.default_rng(8)
    x, lab, ll, tl = random_problem(rng, 4, 30, 9, 6, blank=5)
    lab[0, :3] = [0, 0, 3]  # class 0 is a real label when the blank is elsewhere
    ll[0] = max(ll[0], 3)
    rows = np.repeat(np.arange(4), ll)
    cols = np.concatenate([np.arange(n) for n in ll])
    vals = lab[rows, cols]
    coo = sp.coo_matrix((vals, (rows, cols)), shape=lab.shape)
    spl = {"coo": coo, "csr": coo.tocsr(), "csc": coo.tocsc(), "coo_array": sp.coo_array(coo)}[fmt]
    assert spl.nnz == ll.sum()  # explicit zeros are stored entries
    d = cyctc.ctc_loss(lab, x, ll, tl, False, blank_index=5, return_grad=True)
    s = cyctc.ctc_loss(spl, x, None, tl, False, blank_index=5, return_grad=True)
    assert np.array_equal(d[0], s[0]) and np.array_equal(d[1], s[1])


def test_time_major_equals_batch_major():
    rng = np.random.default_rng(9)
    x, lab, ll, tl = random_problem(rng, 5, 33, 10, 7, dtype=np.float32)
    lb, gb = cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True)
    lt, gt = cyctc.ctc_loss(lab, tm(x), ll, tl, True, return_grad=True)
    assert gt.shape == (33, 5, 10)
    assert np.array_equal(lb, lt) and np.array_equal(gb, gt.swapaxes(0, 1))


def test_moving_the_blank_by_permuting_classes():
    rng = np.random.default_rng(10)
    C = 8
    x, lab, ll, tl = random_problem(rng, 4, 25, C, 6, blank=0)
    perm = rng.permutation(C)  # class c becomes class perm[c]
    xp = np.empty_like(x)
    xp[..., perm] = x
    labp = perm[lab].astype(np.int32)
    l0, g0 = cyctc.ctc_loss(lab, x, ll, tl, False, blank_index=0, return_grad=True)
    l1, g1 = cyctc.ctc_loss(labp, xp, ll, tl, False, blank_index=int(perm[0]), return_grad=True)
    np.testing.assert_allclose(l1, l0, rtol=1e-13)
    np.testing.assert_allclose(g1[..., perm], g0, atol=1e-14)
    l2 = cyctc.ctc_loss(labp, xp, ll, tl, False, blank_index=int(perm[0]) - C)  # negative blank_index
    assert np.array_equal(l1, l2)


@pytest.mark.parametrize("shape", [(7, 60, 12, 15), (1, 700, 29, 150), (3, 1, 4, 1), (2, 2, 3, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_gives_identical_bits(shape, dtype):
    B, T, C, L = shape
    rng = np.random.default_rng(B * T)
    x, lab, ll, tl = random_problem(rng, B, T, C, L, dtype=dtype)
    out = [cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True, num_threads=n) for n in (1, 2, 3, -1, None)]
    for loss, grad in out[1:]:
        assert np.array_equal(loss, out[0][0]) and np.array_equal(grad, out[0][1])


def test_loss_only_equals_loss_with_gradient():
    rng = np.random.default_rng(12)
    for dtype, scale in [(np.float32, 1.0), (np.float64, 1.0), (np.float64, 60.0)]:
        x, lab, ll, tl = random_problem(rng, 6, 50, 9, 12, dtype=dtype, scale=scale)
        loss_only = cyctc.ctc_loss(lab, x, ll, tl, False)
        loss, _ = cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True)
        assert np.array_equal(loss_only, loss)


def test_read_only_and_strided_inputs():
    rng = np.random.default_rng(13)
    x, lab, ll, tl = random_problem(rng, 3, 20, 6, 5)
    ref = cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True)
    ro = x.copy()
    ro.flags.writeable = False
    lab_ro = lab.copy()
    lab_ro.flags.writeable = False
    variants = {
        "read-only": ro,
        "fortran": np.asfortranarray(x),
        "class axis strided": np.repeat(x, 2, axis=2)[..., ::2],
        "frames reversed twice": x[:, ::-1][:, ::-1],
        "batch negative stride": x[::-1].copy()[::-1],
        "memory-mapped-like offset view": np.pad(x, ((0, 0), (0, 0), (1, 0)))[..., 1:],
    }
    for name, v in variants.items():
        loss, grad = cyctc.ctc_loss(lab_ro, v, ll, tl, False, return_grad=True)
        assert np.array_equal(loss, ref[0]), name
        assert np.array_equal(grad, ref[1]), name
        assert grad.flags.c_contiguous


def test_inputs_are_never_modified():
    rng = np.random.default_rng(14)
    x, lab, ll, tl = random_problem(rng, 3, 20, 6, 5)
    copies = [a.copy() for a in (x, lab, ll, tl)]
    cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True, reduction="mean")
    for a, c in zip((x, lab, ll, tl), copies):
        assert np.array_equal(a, c)


def test_reductions_and_zero_infinity():
    rng = np.random.default_rng(15)
    x, lab, ll, tl = random_problem(rng, 4, 12, 6, 4)
    tl[2] = 1
    ll[2] = 3  # infeasible
    loss, grad = cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True)
    assert np.isposinf(loss[2]) and np.all(grad[2] == 0)
    z = cyctc.ctc_loss(lab, x, ll, tl, False, zero_infinity=True)
    assert z[2] == 0 and np.array_equal(np.delete(z, 2), np.delete(loss, 2))
    s = cyctc.ctc_loss(lab, x, ll, tl, False, reduction="sum", zero_infinity=True)
    np.testing.assert_allclose(s, np.delete(loss, 2).sum(), rtol=1e-15)
    m, gm = cyctc.ctc_loss(lab, x, ll, tl, False, reduction="mean", zero_infinity=True, return_grad=True)
    np.testing.assert_allclose(m, np.mean(z / np.maximum(ll, 1)), rtol=1e-15)
    np.testing.assert_allclose(gm, grad / (np.maximum(ll, 1)[:, None, None] * 4), rtol=1e-15)
    assert np.isposinf(cyctc.ctc_loss(lab, x, ll, tl, False, reduction="sum"))


def test_mean_divides_by_label_length_at_least_1():
    """reduction="mean" is PyTorch's: loss / max(label_length, 1) averaged over the batch, so a zero-length label
    (the all-blank path) counts with its whole loss; the gradient carries the same factors."""
    rng = np.random.default_rng(17)
    x, lab, ll, tl = random_problem(rng, 4, 12, 6, 4)
    ll[1], ll[3] = 0, 1
    loss, grad = cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True)
    assert np.isclose(loss[1], -np.sum(x[1, :tl[1], 0] - np.log(np.sum(np.exp(x[1, :tl[1]]), axis=1))), rtol=1e-13)
    m, gm = cyctc.ctc_loss(lab, x, ll, tl, False, reduction="mean", return_grad=True)
    divisor = np.array([ll[0], 1, ll[2], 1], dtype=np.float64)
    np.testing.assert_allclose(m, np.mean(loss / divisor), rtol=1e-15)
    np.testing.assert_allclose(gm, grad / (divisor[:, None, None] * 4), rtol=1e-15)


def test_float16_is_computed_in_float32():
    rng = np.random.default_rng(16)
    x, lab, ll, tl = random_problem(rng, 3, 20, 6, 5, dtype=np.float16)
    loss, grad = cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True)
    assert loss.dtype == np.float16 and grad.dtype == np.float16
    l32, g32 = cyctc.ctc_loss(lab, x.astype(np.float32), ll, tl, False, return_grad=True)
    assert np.array_equal(loss, l32.astype(np.float16)) and np.array_equal(grad, g32.astype(np.float16))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_poison_only_their_example(bad):
    rng = np.random.default_rng(17)
    x, lab, ll, tl = random_problem(rng, 3, 20, 6, 4)
    tl[1] = 12
    clean = cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True)
    x[1, 15, :] = bad  # beyond logit_length: ignored
    assert np.array_equal(cyctc.ctc_loss(lab, x, ll, tl, False), clean[0])
    x[1, 5, :] = bad
    loss, grad = cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True)
    assert np.isnan(loss[1]) and np.all(np.isnan(grad[1, :tl[1]]))
    for b in (0, 2):
        assert loss[b] == clean[0][b] and np.array_equal(grad[b], clean[1][b])


def test_minus_inf_for_one_class_is_fine():
    """-inf logits are a probability of exactly 0: fine unless the label needs that class."""
    rng = np.random.default_rng(18)
    x, lab, ll, tl = random_problem(rng, 2, 20, 6, 4)
    lab[:, :4] = [[1, 2, 1, 2], [3, 4, 3, 4]]
    ll[:] = 4
    x[..., 5] = -np.inf
    x[1, :, 4] = -np.inf  # example 1 needs class 4 at some frame: probability exactly 0
    loss, grad = cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True)
    ref_l, ref_g = batch_reference(np.where(np.isinf(x), -1e300, x)[:1], lab[:1], ll[:1], tl[:1], 0)
    np.testing.assert_allclose(loss[0], ref_l[0], rtol=1e-12)
    np.testing.assert_allclose(grad[0], ref_g[0], atol=1e-12)
    assert np.isposinf(loss[1]) and np.all(grad[1] == 0)


@pytest.mark.parametrize("scale", [50.0, 200.0, 1000.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_peaked_logits_are_exact(scale, dtype):
    """Peaked logits push the scaled recursion out of range: the log-space path takes over, exactly."""
    rng = np.random.default_rng(int(scale))
    x, lab, ll, tl = random_problem(rng, 4, 30, 8, 8, dtype=dtype, scale=scale)
    loss, grad = cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True)
    ref_l, ref_g = batch_reference(x.astype(np.float64), lab, ll, tl, 0)
    assert np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, ref_l, rtol=1e-5 if dtype == np.float32 else 1e-11)
    np.testing.assert_allclose(grad, ref_g, atol=1e-5 if dtype == np.float32 else 1e-10)


def test_label_far_below_the_rest():
    """A needed label 1000 nats below the other classes at every frame: exact, finite loss."""
    rng = np.random.default_rng(19)
    x, lab, ll, tl = random_problem(rng, 3, 20, 8, 5, dtype=np.float64)
    for b in range(3):
        x[b, :, lab[b, 0]] -= 1000.0
    loss, grad = cyctc.ctc_loss(lab, x, ll, tl, False, return_grad=True)
    ref_l, ref_g = batch_reference(x, lab, ll, tl, 0)
    assert np.all(loss > 1000) and np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, ref_l, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_g, atol=1e-10)


def test_long_sequence_stays_exact():
    """T = 2000, L = 400, float64: the scaled recursion against the log-space reference."""
    rng = np.random.default_rng(20)
    x, lab, ll, tl = random_problem(rng, 1, 2000, 12, 400, dtype=np.float64, min_frac=1.0)
    loss = cyctc.ctc_loss(lab, x, ll, tl, False)
    # the reference: float64 log-space forward pass, vectorised over states
    from scipy.special import log_softmax, logsumexp
    lp = log_softmax(x[0, :tl[0]], axis=1)
    ext = np.zeros(2 * ll[0] + 1, dtype=int)
    ext[1::2] = lab[0, :ll[0]]
    S = ext.size
    skip = np.zeros(S, bool)
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    a = np.full(S, -np.inf)
    a[:2] = lp[0, ext[:2]]
    for t in range(1, tl[0]):
        prev1 = np.concatenate([[-np.inf], a[:-1]])
        prev2 = np.where(skip, np.concatenate([[-np.inf, -np.inf], a[:-2]]), -np.inf)
        a = logsumexp(np.stack([a, prev1, prev2]), axis=0) + lp[t, ext]
    np.testing.assert_allclose(loss[0], -logsumexp(a[-2:]), rtol=1e-11)


def test_empty_batch_and_zero_frames():
    x = np.zeros((0, 5, 4))
    loss, grad = cyctc.ctc_loss(np.zeros((0, 3), np.int32), x, np.zeros(0, np.int32), None, False,
                                return_grad=True)
    assert loss.shape == (0,) and grad.shape == (0, 5, 4)
    x = np.zeros((2, 0, 4))
    loss = cyctc.ctc_loss(np.array([[1], [1]]), x, [0, 1], None, False)
    assert loss[0] == 0 and np.isposinf(loss[1])


@pytest.mark.parametrize("C,L", [(30, 120), (100, 150), (200, 70)])
def test_repeated_classes_and_many_distinct_labels(C, L):
    """Labels that repeat classes (a frame's probabilities are computed once per distinct class) and labels of more
    distinct classes than the kernel deduplicates (its per-label fallback): exact loss and gradient either way."""
    from ctc_reference import ctc_logspace
    rng = np.random.default_rng(C + L)
    T = 2 * L + 20
    x = rng.standard_normal((T, 2, C))
    labels = rng.integers(1, C, size=(2, L)).astype(np.int32)
    labels[1, L // 2:] = labels[1, 0]  # a long run of one class (blanks needed between them)
    ll = np.array([L, L], dtype=np.int32)
    loss, g = cyctc.ctc_loss(labels, x, ll, [T, T], return_grad=True)
    for b in range(2):
        rl, rg = ctc_logspace(x[:, b], labels[b], 0)
        assert loss[b] == pytest.approx(rl, rel=1e-12)
        np.testing.assert_allclose(g[:, b], rg, atol=1e-11)
    assert np.array_equal(cyctc.ctc_loss(labels, x, ll, [T, T]), loss)
