"""The loss functions at extreme magnitudes (issue 13, items 1 and 2): logits of +-1e30 and at the limits of each
float type, float64 logits shifted by 1e8 and more, and classes at -1e10, -1e30 or -inf. Checked against the
float64 log-space reference of tests/ctc_reference.py (scipy's log_softmax subtracts each frame's maximum first,
which is exact), for ctc_loss, ctc_loss_v1 (both merge modes, collapse) and the command line, loss-only and
gradient calls: the loss to float64 rounding, each valid frame's gradient summing to 0 and matching the exact one.

These depend on the CPU kernel forming log-probabilities as (x - m) - log(s) and the softmax as exp(x - m) / s
(the lead's part of issue 13); the decoders' and the alignment's magnitudes are in tests/test_edges.py.
"""
import numpy as np
import pytest

import cyctc
from ctc_reference import ctc_logspace

T, C = 6, 4
LAB = np.array([1, 2])


def _check(x, labels, blank=0, merge=True, collapse=False, rtol=1e-14, gtol=1e-12, xref=None):
    """ctc_loss (or ctc_loss_v1 when blank == C - 1 and merge/collapse matter) of one (T, C) sequence against the
    reference on xref (default: x in float64), loss-only and with the gradient."""
    xref = (x if xref is None else xref).astype(np.float64)
    if x.dtype == np.float16:  # answered in float16: about 3 decimal digits
        rtol, gtol = max(rtol, 2e-3), max(gtol, 2e-3)
    ref_labels = labels
    if collapse:
        ref_labels = np.array([v for i, v in enumerate(labels) if i == 0 or v != labels[i - 1]])
    want, want_g = ctc_logspace(xref, ref_labels, blank, merge)
    calls = []
    if blank == 0 and merge and not collapse:
        calls.append(lambda g: cyctc.ctc_loss(labels[None], x[:, None], [len(labels)], [len(x)], return_grad=g))
    if blank == x.shape[1] - 1:
        calls.append(lambda g: cyctc.ctc_loss_v1(labels[None], x[:, None], [len(x)], label_length=[len(labels)],
                                                 ctc_merge_repeated=merge, preprocess_collapse_repeated=collapse,
                                                 return_grad=g))
    assert calls
    for fn in calls:
        loss, grad = fn(True)
        loss_only = fn(False)
        assert loss_only.tobytes() == loss.tobytes()  # a loss-only call returns the gradient call's loss exactly
        with np.errstate(over="ignore"):  # an exact loss beyond the answer dtype's range is inf there
            np.testing.assert_allclose(float(loss[0]), float(np.asarray(want).astype(loss.dtype)), rtol=rtol)
        g = grad[:, 0].astype(np.float64)
        np.testing.assert_allclose(g, want_g, atol=gtol, rtol=0)
        np.testing.assert_allclose(g.sum(axis=1), 0, atol=gtol)


@pytest.mark.parametrize("value", [1e30, -1e30, 1e300, -1e300])
def test_equal_logits_at_any_magnitude_give_the_uniform_softmax(value):
    """Logits all equal (the softmax is uniform): the loss of zeros, whatever their size (was 0 at 1e30)."""
    x = np.full((T, C), value)
    _check(x, LAB, xref=np.zeros((T, C)))
    _check(x, np.array([0, 1, 1]), blank=C - 1, xref=np.zeros((T, C)))


@pytest.mark.parametrize("dtype,value", [(np.float32, 3e38), (np.float32, -3e38), (np.float16, 65504),
                                         (np.float16, -65504)])
def test_equal_logits_at_the_limits_of_each_dtype(dtype, value):
    x = np.full((T, C), value, dtype=dtype)
    _check(x, LAB, xref=np.zeros((T, C)), rtol=1e-6, gtol=1e-6)


@pytest.mark.parametrize("shift", [1e8, -1e8, 1e12, 1e15])
def test_float64_shifts_keep_float64_accuracy(shift):
    """float64 logits shifted by a constant: exact to float64 rounding of the shifted values (was 5e-10 relative
    at 1e8)."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.normal(size=(T, C)) * 3 + shift
        _check(x, LAB)
        _check(x, np.array([0, 0, 1]), blank=C - 1, merge=False)
        _check(x, np.array([0, 0, 1]), blank=C - 1, collapse=True)


@pytest.mark.parametrize("dtype,scale", [(np.float32, 3e38), (np.float32, 1e30), (np.float64, 1e300),
                                         (np.float16, 65504)])
def test_logits_mixing_the_extremes_of_each_dtype(dtype, scale):
    """Frames mixing +max, +-max/2, -max and 0 of a dtype, where every class below its frame's maximum is at least
    max/2 below it: those classes have probability 0 to any precision (e^-(3e4) and less), so the exact result is
    that of the same frames with them at -inf (an ordinary loss: the labels reach a frame maximum)."""
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = (rng.choice([-1.0, -0.5, 0.0, 0.5], size=(T, C)) * scale).astype(dtype)
        x[:, 0] = dtype(scale)  # the blank is a maximum of every frame
        x[1, 1] = x[3, 2] = dtype(scale)  # and so are labels 1 (frame 1) and 2 (frame 3)
        exact = np.where(x == x.max(axis=1, keepdims=True), 0.0, -np.inf)
        _check(x, LAB, xref=exact, rtol=1e-6, gtol=1e-6)


def _one_label_at(neg, C=3):
    """Logits (T, C): the blank (class 0) at 0 on every frame, every other class (the label 1 included) at
    ``neg``; the exact loss of labels [1] and its gradient, from the definition: the label sits on one of the T
    frames, each equally likely, so loss = -neg - log T + T log(1 + (C - 1) e^neg) and the gradient is +1/T on
    the blank, -1/T on the label, 0 elsewhere (e^neg is 0 in float64 for neg <= -800)."""
    x = np.full((T, C), neg, dtype=np.float64)
    x[:, 0] = 0.0
    loss = -neg - np.log(T) + T * np.log1p((C - 1) * np.exp(neg))
    grad = np.zeros((T, C))
    grad[:, 0] = 1.0 / T
    grad[:, 1] = -1.0 / T
    return x, loss, grad


@pytest.mark.parametrize("neg", [-1e10, -1e30, -1e300])
def test_a_needed_label_at_very_negative_logits(neg):
    """Non-blank logits at -1e10, -1e30, -1e300, one label, T = 6 (issue 13): the loss is exact and each frame's
    gradient is the exact +1/6 (blank) and -1/6 (label), summing to 0 (was -1 or -2 per frame at -1e30, 6.5e-7
    off at -1e10). ctc_loss_v1 (both merge modes) on the same frames with the classes reversed (blank last)."""
    x, want, want_g = _one_label_at(neg)
    calls = [(lambda g: cyctc.ctc_loss([[1]], x[:, None], [1], return_grad=g), False)]
    for merge in (True, False):
        calls.append((lambda g, m=merge: cyctc.ctc_loss_v1([[1]], x[:, None, ::-1], [T], label_length=[1],
                                                           ctc_merge_repeated=m, return_grad=g), True))
    for fn, reversed_classes in calls:
        loss, grad = fn(True)
        assert fn(False).tobytes() == loss.tobytes()  # a loss-only call returns the gradient call's loss exactly
        np.testing.assert_allclose(loss[0], want, rtol=1e-15)
        g = grad[:, 0, ::-1] if reversed_classes else grad[:, 0]
        np.testing.assert_allclose(g, want_g, atol=1e-15)
        np.testing.assert_allclose(g.sum(axis=1), 0, atol=1e-15)


@pytest.mark.parametrize("neg", [-1e10, -1e30, -1e300, -np.inf])
def test_very_negative_classes_no_path_needs(neg):
    """A class no label needs, or a label on some frames only, at -1e10 ... -inf: probability 0 to any precision
    (e^-(1e10) and less), so the exact result is that of -inf there (an ordinary loss)."""
    rng = np.random.default_rng(2)
    for _ in range(3):
        y = rng.normal(size=(T, C))
        y[:, 3] = neg  # a class no label needs
        _check(y, LAB, xref=np.where(y == neg, -np.inf, y))
        y[2:4, 2] = neg  # the label 2 impossible on two frames only
        exact = np.where(y == neg, -np.inf, y)
        _check(y, LAB, xref=exact)
        _check(y[:, ::-1], np.array([2, 1]), blank=C - 1, xref=exact[:, ::-1])  # v1: class c is C - 1 - c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_of_mixed_magnitudes_is_per_example(dtype):
    """Huge, shifted, very negative and ordinary examples in one batch: each gets its own exact result,
    bit-identical to being computed alone."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(T, 4, C)).astype(dtype)
    x[:, 1] = dtype(1e30)                           # uniform
    x[:, 2] += dtype(1e6)                           # shifted
    x[:, 3, 1:], x[:, 3, 0] = dtype(-1e30), 0       # the label at -1e30 (see _one_label_at)
    labels = np.array([[1, 2], [1, 2], [3, 1], [1, 0]])
    ll = np.array([2, 2, 2, 1])
    loss, grad = cyctc.ctc_loss(labels, x, ll, return_grad=True)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for b in range(4):
        lb, gb = cyctc.ctc_loss(labels[b:b + 1], x[:, b:b + 1], ll[b:b + 1], return_grad=True)
        assert lb.tobytes() == loss[b:b + 1].tobytes() and gb.tobytes() == grad[:, b:b + 1].tobytes()
        if b == 3:
            _, want, want_g = _one_label_at(-1e30, C=C)
        else:
            xr = x[:, b].astype(np.float64)
            want, want_g = ctc_logspace(xr - xr.max(axis=1, keepdims=True), labels[b, :ll[b]], 0)
        np.testing.assert_allclose(float(loss[b]), want, rtol=tol)
        np.testing.assert_allclose(grad[:, b].astype(np.float64), want_g, atol=tol * 10)


def test_command_line_loss_at_1e30(tmp_path):
    """cyctc loss on float64 matrices of equal 1e30 scores: the uniform loss."""
    kaldiio = pytest.importorskip("kaldiio", reason="kaldiio is not installed (pip install 'cyctc[kaldi]')")
    from cyctc.cli import main

    kaldiio.save_ark(str(tmp_path / "x.ark"), {"a": np.full((T, C), 1e30)})
    (tmp_path / "l.txt").write_text("a 1 2\n")
    assert main(["loss", f"ark:{tmp_path}/x.ark", f"ark,t:{tmp_path}/l.txt", f"ark,t:{tmp_path}/o.txt",
                 f"ark:{tmp_path}/g.ark"]) == 0
    loss = float(open(tmp_path / "o.txt").read().split()[1])
    want, want_g = ctc_logspace(np.zeros((T, C)), LAB, 0)
    np.testing.assert_allclose(loss, want, rtol=1e-15)
    g = dict(kaldiio.load_ark(str(tmp_path / "g.ark")))["a"]
    np.testing.assert_allclose(g, want_g, atol=1e-15)
