"""Adversarial inputs at the edges of every public function (issue 13), except the loss kernel's own magnitude
behaviour (tests/test_magnitudes.py):

* extreme magnitudes (+-1e30, shifts of 1e8 and more, float16/float32 limits) for the decoders and the alignment:
  results equal those of the same inputs with each frame's maximum subtracted exactly (shift invariance), and the
  independent references in decode_reference.py;
* NaN and +-inf in every kind of padding (frames past the length, labels past label_length) for every function:
  the same bits as clean padding, and a gradient of exactly 0 there;
* the decisions of issue 13 for the Keras functions (float lengths, float16 answers), ragged labels and negative
  blanks in the alignment.
"""
import warnings

import numpy as np
import pytest
from scipy.special import log_softmax

import cyctc
import decode_reference as dref
from ctc_reference import ctc_logspace


def _same(a, b):
    """Bit-identical results (arrays, SparseDecoded lists, tuples)."""
    if hasattr(a, "indices") and hasattr(a, "values"):
        _same(a.indices, b.indices)
        _same(a.values, b.values)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _same(u, v)
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), (a, b)


def _minus_rowmax(x):
    """x minus each frame's maximum (exact in floating point: every value within a factor 2 of the maximum)."""
    return x - x.max(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------------ magnitudes


@pytest.mark.parametrize("shift", [1e8, 1e12, 1e20, 1e30, -1e30])
def test_beam_search_is_shift_invariant(shift):
    """Scores of logits shifted by any constant are those of the shifted values with each frame's maximum taken
    off exactly: (x - m) - log(s), never x - (m + log s), which rounds log(s) away (logits all 1e30 looked like
    certainty: log-probabilities 0)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 3, 4)) * 3
    xs = x + shift  # at 1e20 and beyond every value rounds to the shift itself: a uniform softmax
    got = cyctc.ctc_beam_search_decoder(xs, None, beam_width=6, top_paths=3)
    _same(got, cyctc.ctc_beam_search_decoder(_minus_rowmax(xs), None, beam_width=6, top_paths=3))
    for b in range(3):
        want = dref.beam_search(_minus_rowmax(xs[:, b]), 6, 3)
        for k, (seq, score) in enumerate(want):
            assert got.decoded[k].to_list()[b].tolist() == seq
            np.testing.assert_allclose(got.log_probabilities[b, k], score, rtol=1e-13)
    if abs(shift) >= 1e20:  # uniform: the best path is empty with log p = T log(1/C) plus the other alignments
        assert np.all(got.log_probabilities < 0)


@pytest.mark.parametrize("shift", [1e8, 1e12, 1e30])
def test_align_normalize_is_shift_invariant(shift):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6, 4)) * 2
    lab = np.array([[1, 2], [3, 3]])
    xs = x + shift
    got = cyctc.ctc_align(xs, lab, normalize=True)
    _same(got, cyctc.ctc_align(_minus_rowmax(xs), lab, normalize=True))
    for b in range(2):
        score, path = dref.best_alignment(log_softmax(_minus_rowmax(xs[b]), axis=1), lab[b], 0)
        if shift < 1e16:  # (beyond, every frame is uniform: all paths tie, and ctc_align breaks ties its own way)
            assert got.path[b].tolist() == list(path)
        np.testing.assert_allclose(got.log_prob[b], score, rtol=1e-14)
    if shift >= 1e30:  # every frame uniform: every path scores T log(1/4)
        np.testing.assert_allclose(got.log_prob, 6 * np.log(0.25), rtol=1e-15)


@pytest.mark.parametrize("neg", [-1e10, -1e30, -np.inf])
def test_very_negative_classes_in_decoders_and_alignment(neg):
    """Classes at -1e10, -1e30 or -inf are (numerically) impossible: the best beam path and its score, and the
    alignment, are those of the same input with -inf there."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 2, 5))
    x[:, :, 1:3] = neg
    ref = x.copy()
    ref[:, :, 1:3] = -np.inf
    got = cyctc.ctc_beam_search_decoder(x, None, beam_width=8, top_paths=1)
    want = cyctc.ctc_beam_search_decoder(ref, None, beam_width=8, top_paths=1)
    _same(got.decoded[0], want.decoded[0])
    np.testing.assert_allclose(got.log_probabilities, want.log_probabilities, rtol=1e-15)
    for b in range(2):
        seq, score = dref.beam_search(np.where(np.isinf(x[:, b]), -1e300, x[:, b]), 8, 1)[0]
        assert got.decoded[0].to_list()[b].tolist() == seq
        np.testing.assert_allclose(got.log_probabilities[b, 0], score, rtol=1e-13)
    g = cyctc.ctc_greedy_decoder(x, None)
    _same(g.decoded[0], cyctc.ctc_greedy_decoder(ref, None).decoded[0])
    lab = np.array([[3, 4], [4, 3]])
    a = cyctc.ctc_align(x.swapaxes(0, 1), lab, normalize=True)
    a_ref = cyctc.ctc_align(ref.swapaxes(0, 1), lab, normalize=True)
    _same(a.path, a_ref.path)
    np.testing.assert_allclose(a.log_prob, a_ref.log_prob, rtol=1e-15)
    assert np.all(np.isfinite(a.log_prob))


def test_greedy_scores_at_the_limits_of_each_dtype():
    """neg_sum_logits is summed in float64 and answered in the inputs' dtype, float32 at least: float16 maxima
    stay finite; float32 maxima whose sum passes float32's range are -inf, without a warning."""
    T = 6
    x16 = np.full((T, 1, 3), -np.float16(65504), dtype=np.float16)
    x16[:, 0, 1] = np.float16(65504)
    x32 = x16.astype(np.float32) * np.float32(3e38 / 65504)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g16 = cyctc.ctc_greedy_decoder(x16, None)
        g32 = cyctc.ctc_greedy_decoder(x32, None)
    assert g16.neg_sum_logits.dtype == np.float32 and g16.neg_sum_logits[0, 0] == -T * 65504.0
    assert g16.decoded[0].to_list()[0].tolist() == [1]
    assert g32.neg_sum_logits.dtype == np.float32 and g32.neg_sum_logits[0, 0] == -np.inf
    g64 = cyctc.ctc_greedy_decoder(x32.astype(np.float64), None)
    assert g64.neg_sum_logits[0, 0] == -T * float(np.float32(3e38))


def test_float16_beam_scores_stay_finite():
    """A finite beam score below -65504 is answered finite (float32), so -inf still marks only a missing path."""
    x = np.zeros((2, 1, 3), dtype=np.float16)
    x[:, :, :2] = -40000  # two labels, each costing ~40000 nats a frame; blank (class 2) at 0
    lp = cyctc.ctc_beam_search_decoder(x, None, beam_width=8, top_paths=5).log_probabilities
    assert lp.dtype == np.float32
    assert np.all(np.isfinite(lp[0, :5])) and lp[0, 4] < -65504  # a two-label path: ~ -80000
    want = dref.beam_search(x[:, 0].astype(np.float64), 8, 5)
    np.testing.assert_allclose(lp[0], [s for _, s in want], rtol=1e-6)
    missing = cyctc.ctc_beam_search_decoder(x[:1], None, beam_width=8, top_paths=5).log_probabilities
    assert np.isneginf(missing[0, 3:]).all() and np.isfinite(missing[0, :3]).all()  # one frame: 3 prefixes


def test_ctc_decode_float16_scores_stay_finite():
    T, C = 5000, 3
    y = np.zeros((1, T, C), dtype=np.float16)  # every class at p = 0: each frame costs -log(1e-7)
    dense, logp = cyctc.ctc_decode(y, [T])
    assert logp.dtype == np.float32 and np.isfinite(logp[0, 0])
    per_frame = float(np.log(np.float16(0) + np.float16(1e-7)))  # log(p + eps) in y_pred's dtype, as Keras
    np.testing.assert_allclose(logp[0, 0], -T * per_frame, rtol=1e-6)  # ~79727 > 65504


def test_batch_cost_probabilities_at_the_limits():
    """Probabilities of 0, 1 and subnormals (float64 and float16): Keras's loss, log(p + 1e-7), exactly."""
    y = np.array([[[0.0, 0.0, 1.0], [5e-324, 1.0, 0.0], [1.0, 0.0, 5e-324], [0.0, 1.0, 0.0]]])
    lab = np.array([[0, 1]])
    loss = cyctc.ctc_batch_cost(lab, y, [[4]], [[2]])
    want = ctc_logspace(np.log(y[0] + 1e-7), lab[0], 2)[0]
    np.testing.assert_allclose(loss[0, 0], want, rtol=1e-14)
    y16 = np.array(y, dtype=np.float16)
    y16[0, 1, 0] = np.float16(6e-8)  # the smallest float16 subnormal
    loss16 = cyctc.ctc_batch_cost(lab, y16, [[4]], [[2]])
    z16 = np.log((y16[0] + np.float16(1e-7)).astype(np.float32))  # epsilon added in float16, as Keras
    want16 = ctc_logspace(z16.astype(np.float64), lab[0], 2)[0]
    assert loss16.dtype == np.float16 and loss16[0, 0] == np.float16(want16)


def test_batch_cost_float16_gradient_says_inf_without_warning():
    """float16 y_pred: computed in float32, answered in float16; gradient entries beyond +-65504 (probabilities
    below ~1.5e-5 on a frame the labels need) are +-inf, and no RuntimeWarning is raised."""
    rng = np.random.default_rng(4)
    y = rng.dirichlet(np.ones(4), size=(2, 6)).astype(np.float16)
    y[0, :, 1] = 0  # label 1 has p = 0 everywhere: d loss / d p ~ -1e7 there
    lab, tl, ll = np.array([[1, 0], [2, 0]]), [[6], [5]], [[2], [1]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = cyctc.ctc_batch_cost(lab, y, tl, ll, return_grad=True)
    # Keras's recipe in float32 on the float16 sums p + eps: TF1's loss on their log, chain rule through the log
    shifted = (y + np.float16(1e-7)).astype(np.float32)
    l32, gz = cyctc.ctc_loss_v1(lab, np.log(shifted), np.ravel(tl), time_major=False, label_length=np.ravel(ll),
                                return_grad=True)
    g32 = np.where(np.arange(6)[None, :, None] < np.ravel(tl)[:, None, None], gz / shifted, 0)
    assert loss.dtype == grad.dtype == np.float16
    with np.errstate(over="ignore"):
        _same(loss, l32.astype(np.float16)[:, None])
        _same(grad, g32.astype(np.float16))
    assert np.isneginf(grad[0, :, 1]).any() and np.isfinite(grad[1]).all()


# --------------------------------------------------------------------------------------------------- padding


B, T, C = 3, 9, 5
_rng = np.random.default_rng(5)
X = _rng.normal(size=(B, T, C))                                 # batch-major logits
TL = np.array([9, 5, 0])                                        # valid frames (one example has none)
LAB = np.array([[1, 2, 2, 3], [4, 1, 0, 0], [0, 0, 0, 0]])       # blank 0 (ctc_loss, ctc_align)
LL = np.array([4, 2, 0])
LAB_V1 = np.array([[0, 1, 1, 2], [3, 0, 0, 0], [0, 0, 0, 0]])    # blank C - 1
PROBS = np.exp(log_softmax(X, axis=2))


def _pad(x, lengths, value):
    """x (B, T, ...) with every frame t >= lengths[b] set to value."""
    out = x.copy()
    out[np.arange(x.shape[1])[None, :] >= np.asarray(lengths)[:, None]] = value
    return out


def _pad_labels(lab, ll, value, dtype=np.int64):
    out = lab.astype(dtype)
    out[np.arange(lab.shape[1])[None, :] >= ll[:, None]] = value
    return out


def _frames_zero_past(g, lengths, time_major=False):
    g = g.swapaxes(0, 1) if time_major else g
    return not np.any(g[np.arange(g.shape[1])[None, :] >= np.asarray(lengths)[:, None]])


PADS = [np.nan, np.inf, -np.inf, 1e30]


@pytest.mark.parametrize("value", PADS)
def test_loss_padding_never_read(value):
    """Frames past logit_length (NaN, +-inf, huge) and labels past label_length (any int) change nothing: the same
    bits as zero padding, and the gradient there is exactly 0."""
    xp = _pad(X, TL, value)
    labp = _pad_labels(LAB, LL, 2**40 if value != 1e30 else -7)
    for tm in (False, True):
        x0, x1 = (X.swapaxes(0, 1), xp.swapaxes(0, 1)) if tm else (X, xp)
        for reduction in ("none", "mean"):
            clean = cyctc.ctc_loss(LAB, x0, LL, TL, logits_time_major=tm, reduction=reduction, return_grad=True)
            got = cyctc.ctc_loss(labp, x1, LL, TL, logits_time_major=tm, reduction=reduction, return_grad=True)
            _same(got, clean)
            _same(cyctc.ctc_loss(labp, x1, LL, TL, logits_time_major=tm, reduction=reduction), clean[0])
            assert _frames_zero_past(got[1], TL, tm)
    v1p = _pad_labels(LAB_V1, LL, 2**40 if value != 1e30 else -7)
    for merge in (True, False):
        clean = cyctc.ctc_loss_v1(LAB_V1, X.swapaxes(0, 1), TL, label_length=LL, ctc_merge_repeated=merge,
                                  preprocess_collapse_repeated=not merge, return_grad=True)
        got = cyctc.ctc_loss_v1(v1p, xp.swapaxes(0, 1), TL, label_length=LL, ctc_merge_repeated=merge,
                                preprocess_collapse_repeated=not merge, return_grad=True)
        _same(got, clean)
        assert _frames_zero_past(got[1], TL, True)


@pytest.mark.parametrize("value", PADS)
def test_batch_cost_padding_never_read(value):
    """A masked softmax leaves NaN past input_length: the loss and the gradient there (exactly 0) do not see it;
    y_true past label_length may hold anything, NaN included (float labels)."""
    yp = _pad(PROBS, TL, value)
    yt = _pad_labels(LAB_V1, LL, np.nan, np.float64)
    clean = cyctc.ctc_batch_cost(LAB_V1, PROBS, TL[:, None], LL[:, None], return_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = cyctc.ctc_batch_cost(yt, yp, TL[:, None], LL[:, None], return_grad=True)
        _same(cyctc.ctc_batch_cost(yt, yp, TL[:, None], LL[:, None]), clean[0])
    _same(got, clean)
    assert _frames_zero_past(got[1], TL)
    with pytest.raises(ValueError, match="y_true"):  # inside label_length a NaN is still an error
        cyctc.ctc_batch_cost(_pad_labels(LAB_V1, LL - (LL > 0), np.nan, np.float64), PROBS, TL, LL)


@pytest.mark.parametrize("value", PADS)
def test_decoders_padding_never_read(value):
    xp = _pad(X, TL, value)
    for tm in (False, True):
        x0, x1 = (X.swapaxes(0, 1), xp.swapaxes(0, 1)) if tm else (X, xp)
        _same(cyctc.ctc_greedy_decoder(x1, TL, time_major=tm), cyctc.ctc_greedy_decoder(x0, TL, time_major=tm))
        _same(cyctc.ctc_beam_search_decoder(x1, TL, 4, 2, time_major=tm),
              cyctc.ctc_beam_search_decoder(x0, TL, 4, 2, time_major=tm))
    yp = _pad(PROBS, TL, value)
    for greedy in (True, False):
        _same(cyctc.ctc_decode(yp, TL, greedy=greedy, beam_width=3, top_paths=2),
              cyctc.ctc_decode(PROBS, TL, greedy=greedy, beam_width=3, top_paths=2))


@pytest.mark.parametrize("value", PADS)
def test_align_padding_never_read(value):
    logp = log_softmax(X, axis=2)
    labp = _pad_labels(LAB, LL, 2**40 if value != 1e30 else -7)
    for normalize, x in ((False, logp), (True, X)):
        clean = cyctc.ctc_align(x, LAB, TL, LL, normalize=normalize)
        got = cyctc.ctc_align(_pad(x, TL, value), labp, TL, LL, normalize=normalize)
        _same(got, clean)
        assert np.all(got.path[np.arange(T)[None, :] >= TL[:, None]] == -1)


# ------------------------------------------------------------------------------------- alignment arguments


@pytest.mark.parametrize("labels", [[[1, 2], [3, [4]]], [[1, 2], [3, [4, 1]]], [[1, [2]], [3, 4, 1]],
                                    [[1, 2], [[3], [4]]], [[1, 2], [3, {}]], [[1, 2], [1.5]]])
def test_align_ragged_labels_name_labels(labels):
    x = log_softmax(np.zeros((2, 6, 5)), axis=2)
    with pytest.raises((ValueError, TypeError)) as e:
        cyctc.ctc_align(x, labels)
    assert "labels[" in str(e.value)
    assert "setting an array element" not in str(e.value)


def test_segments_negative_blank():
    """The result knows C: a negative blank is resolved as ctc_align's blank_index; ctc_segments alone (no C)
    refuses it rather than reporting runs of the blank as labels."""
    x = np.log([[[.8, .1, .1], [.1, .1, .8], [.1, .8, .1]]])
    res = cyctc.ctc_align(x, [[0, 1]], blank_index=-1)
    assert res.path[0].tolist() == [0, 2, 1]
    want = [(0, 1, 0), (2, 3, 1)]
    assert res.segments(0, blank=-1) == res.segments(0, blank=2) == res.segments(0) == want
    assert res.segments(0, blank=-3) == [(1, 2, 2), (2, 3, 1)]  # -3 is class 0
    with pytest.raises(ValueError, match="blank"):
        res.segments(0, blank=-4)
    with pytest.raises(ValueError, match="blank"):
        cyctc.ctc_segments(res.path[0], blank=-1)
    hand = cyctc.align.AlignResult(res.path, res.log_prob, res.feasible)  # built by hand: C unknown
    assert hand.segments(0, blank=2) == want
    with pytest.raises(ValueError, match="blank"):
        hand.segments(0, blank=-1)
    path, log_prob, feasible = res  # still a 3-tuple
    assert path is res.path


def test_integer_extremes_in_the_label_utilities():
    """ctc_unique_labels and ctc_segments at the ends of int32/int64: values kept exactly, TF's contract holds."""
    for lab in (np.array([[2**62, -2**62, 2**62, 0], [7, 7, -1, 2**63 - 1]]),
                np.array([[2**31 - 1, -2**31, 2**31 - 1]], dtype=np.int32)):
        y, idx = cyctc.ctc_unique_labels(lab)
        assert y.dtype == lab.dtype and np.array_equal(np.take_along_axis(y, idx.astype(np.intp), axis=1), lab)
        for b in range(lab.shape[0]):
            first = list(dict.fromkeys(lab[b].tolist()))
            assert y[b, :len(first)].tolist() == first
    big = 2**62
    assert cyctc.ctc_segments(np.array([big, big, 0, 5, -1, 7])) == [(0, 2, big), (3, 4, 5)]
    assert cyctc.ctc_segments(np.array([big, 0, big]), blank=big) == [(1, 2, 0)]
