"""The reference cases (tests/data, format in its README) under transformations the other tests do not apply:
the other layout, float64 instead of float32, every reduction, the blank moved to the other end of the classes,
``unique=`` computed here, TF1's and Keras's entry points against TF2's. Each variant is compared with the case's
exact float64 values (``check_*``) or TensorFlow's (``expected_*``)."""
import numpy as np
import pytest

import cyctc
from conftest import case_paths, load_case, sparse_labels

V2 = [p for p in case_paths("tf.nn.ctc_loss", errors=False)]
KERAS = case_paths("tf_keras.backend.ctc_batch_cost", errors=False)


def _exact(c):
    """(losses, batch-major gradients, mask of examples with an exact value) of a v2 case."""
    ref_l = c["check_loss"] if "check_loss" in c else c["expected_loss"]
    ref_g = c["check_grad"] if "check_grad" in c else c["expected_grad"]
    if c["time_major"]:
        ref_g = ref_g.swapaxes(0, 1)
    return ref_l, ref_g, np.isfinite(ref_l)


def _dense(c):
    return c["labels"], c["label_length"]


def _tol(x):
    return (1e-9, 1e-9) if x.dtype == np.float64 else (1e-5, 1e-5)


@pytest.mark.parametrize("path", V2, ids=lambda p: p.split("/")[-1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("time_major", [False, True])
def test_layout_and_dtype(path, dtype, time_major):
    """Either layout, either dtype: the exact values (float64 from float32 inputs too: check_* are exact for them)."""
    c = load_case(path)
    if "check_loss" not in c and dtype == np.float64 and c["dtype"] == "float32":
        pytest.skip("no exact values: TF's float32 numbers are not a float64 reference")
    ref_l, ref_g, ok = _exact(c)
    x = (c["logits"].swapaxes(0, 1) if c["time_major"] else c["logits"]).astype(dtype)   # (B, T, C)
    xin = np.ascontiguousarray(x.swapaxes(0, 1)) if time_major else x
    lab, ll = _dense(c)
    loss, grad = cyctc.ctc_loss(lab, xin, ll, c["logit_length"], time_major, blank_index=int(c["blank_index"]),
                                return_grad=True)
    assert loss.dtype == dtype and grad.dtype == dtype and grad.shape == xin.shape
    g = grad.swapaxes(0, 1) if time_major else grad
    rl, ag = _tol(x)
    np.testing.assert_allclose(loss[ok], ref_l[ok], rtol=rl)
    np.testing.assert_allclose(g[ok], ref_g[ok], rtol=0, atol=ag)
    assert np.all(np.isposinf(loss[~ok])) and np.all(g[~ok] == 0)


@pytest.mark.parametrize("path", V2, ids=lambda p: p.split("/")[-1])
def test_reductions(path):
    """sum and mean (PyTorch's: the batch mean of loss / max(label_length, 1)) against the exact per-example
    values, gradient included; zero_infinity drops the infeasible examples from both."""
    c = load_case(path)
    ref_l, ref_g, ok = _exact(c)
    x = c["logits"].astype(np.float64)
    lab, ll = _dense(c)
    kw = dict(blank_index=int(c["blank_index"]), return_grad=True, zero_infinity=True)
    B = len(ll)
    w = 1.0 / (np.maximum(ll, 1) * B)
    exact_l = np.where(ok, ref_l, 0.0)
    exact_g = np.where(ok[:, None, None], ref_g, 0.0)
    rl = 1e-9 if "check_loss" in c else 1e-5
    for reduction, scale, total in [("sum", np.ones(B), exact_l.sum()), ("mean", w, (exact_l * w).sum())]:
        out, grad = cyctc.ctc_loss(lab, x, ll, c["logit_length"], bool(c["time_major"]), reduction=reduction, **kw)
        assert np.ndim(out) == 0
        np.testing.assert_allclose(out, total, rtol=rl)
        g = grad.swapaxes(0, 1) if c["time_major"] else grad
        np.testing.assert_allclose(g, exact_g * scale[:, None, None], rtol=0, atol=rl)


@pytest.mark.parametrize("path", V2, ids=lambda p: p.split("/")[-1])
def test_blank_moved_to_the_other_end(path):
    """The same problem with the classes rotated so that the blank is first (blank_index=0) or last (-1), labels
    renumbered to match: the same losses, and the gradient rotated back is the same."""
    c = load_case(path)
    ref_l, ref_g, ok = _exact(c)
    x = c["logits"].swapaxes(0, 1) if c["time_major"] else c["logits"]
    x = x.astype(np.float64)
    C, blank = x.shape[2], int(c["blank"])
    lab, ll = _dense(c)
    valid = np.arange(lab.shape[1]) < ll[:, None]
    for new_blank in (0, C - 1):
        shift = new_blank - blank                                    # class k becomes (k + shift) % C
        xr = np.roll(x, shift, axis=2)
        labr = np.where(valid, (lab + shift) % C, 0)
        loss, grad = cyctc.ctc_loss(labr, xr, ll, c["logit_length"], False,
                                    blank_index=new_blank - C if new_blank else 0, return_grad=True)
        rl = 1e-9 if "check_loss" in c else 1e-5
        np.testing.assert_allclose(loss[ok], ref_l[ok], rtol=rl)
        np.testing.assert_allclose(np.roll(grad, -shift, axis=2)[ok], ref_g[ok], rtol=0, atol=rl)


@pytest.mark.parametrize("path", [p for p in V2 if "unique_y" not in np.load(p).files], ids=lambda p: p.split("/")[-1])
def test_unique_computed_here_changes_nothing(path):
    c = load_case(path)
    lab, ll = _dense(c)
    args = (lab, c["logits"], ll, c["logit_length"], bool(c["time_major"]))
    kw = dict(blank_index=int(c["blank_index"]))
    assert np.array_equal(cyctc.ctc_loss(*args, unique=cyctc.ctc_unique_labels(lab), **kw),
                          cyctc.ctc_loss(*args, **kw))


@pytest.mark.parametrize("path", [p for p in V2 if int(np.load(p)["blank"]) == np.load(p)["logits"].shape[2] - 1],
                         ids=lambda p: p.split("/")[-1])
def test_v1_and_sparse_forms_of_blank_last_cases(path):
    """Cases whose blank is C - 1: TF1's ctc_loss (dense or scipy.sparse labels, each layout) gives the same bits
    as ctc_loss; where no example has more labels than frames."""
    c = load_case(path)
    lab, ll = _dense(c)
    tm = bool(c["time_major"])
    want = cyctc.ctc_loss(lab, c["logits"], ll, c["logit_length"], tm, blank_index=-1)
    if np.any(ll > c["logit_length"]):
        pytest.skip("TF1 refuses labels longer than the frames")
    v1 = cyctc.ctc_loss_v1(lab, c["logits"], c["logit_length"], time_major=tm, label_length=ll)
    assert np.array_equal(v1, want)
    if "labels_indices" in c:
        assert np.array_equal(cyctc.ctc_loss_v1(sparse_labels(c), c["logits"], c["logit_length"], time_major=tm),
                              want)
    other = np.ascontiguousarray(c["logits"].swapaxes(0, 1))
    assert np.array_equal(cyctc.ctc_loss_v1(lab, other, c["logit_length"], time_major=not tm, label_length=ll), want)


@pytest.mark.parametrize("path", KERAS, ids=lambda p: p.split("/")[-1])
def test_batch_cost_probabilities_and_their_logits(path):
    """ctc_batch_cost on probabilities equals TF1's ctc_loss on log(p + 1e-7) (Keras's definition), with the
    gradient by the chain rule; both match Keras's expected values; lengths as (B,) or (B, 1) and as floats."""
    c = load_case(path)
    p = c["probs"]
    ll, tl = c["label_length"], c["logit_length"]
    loss, grad = cyctc.ctc_batch_cost(c["labels"], p, tl[:, None], ll[:, None], return_grad=True)
    z = np.log(p + p.dtype.type(1e-7))
    l1, g1 = cyctc.ctc_loss_v1(c["labels"], z, tl, time_major=False, label_length=ll, return_grad=True)
    np.testing.assert_array_equal(loss[:, 0], l1)
    valid = (np.arange(p.shape[1]) < tl[:, None])[:, :, None]
    np.testing.assert_allclose(grad, np.where(valid, g1 / (p + p.dtype.type(1e-7)), 0),
                               rtol=1e-5 if p.dtype == np.float32 else 1e-12)
    rl = 1e-5 if p.dtype == np.float32 else 1e-7
    np.testing.assert_allclose(loss[:, 0], c["expected_loss"], rtol=rl)
    gmax = np.abs(c["expected_grad"]).max()
    np.testing.assert_allclose(grad, c["expected_grad"], rtol=0, atol=(1e-4 if p.dtype == np.float32 else 1e-6) * gmax)
    alt = cyctc.ctc_batch_cost(c["labels"].astype(np.float64), p, tl.astype(np.float32), ll.astype(np.float64))
    np.testing.assert_array_equal(alt, loss)
