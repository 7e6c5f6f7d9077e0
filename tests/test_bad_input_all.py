"""Malformed arguments thrown at every public function.

Each call either raises a ValueError/TypeError whose message names the offending argument, or returns the
documented result; no call crashes or hangs (a watchdog ends the process with a traceback if one does), and no
call changes its inputs, whether it raises or not.
"""
import copy
import faulthandler
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import log_softmax

import cyctc

B, T, C = 2, 10, 5
_rng = np.random.default_rng(0)
X_TM = _rng.standard_normal((T, B, C))                       # (T, B, C) logits
X_BM = np.ascontiguousarray(X_TM.swapaxes(0, 1))             # (B, T, C)
PROBS = np.exp(log_softmax(X_BM, axis=2))                    # (B, T, C) softmax outputs
LOGP = log_softmax(X_BM, axis=2)                             # (B, T, C) log-probabilities
LAB = np.array([[1, 2, 3], [2, 2, 0]], np.int32)             # blank 0
LAB_V1 = np.array([[0, 1, 2], [1, 1, 0]], np.int32)          # blank C - 1
LL = np.array([3, 2], np.int32)
TL = np.array([10, 8], np.int32)


@pytest.fixture(autouse=True)
def watchdog():
    """A call that hangs ends the test process with every thread's traceback instead of blocking CI."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


GOOD = {
    "ctc_loss": dict(labels=LAB, logits=X_TM, label_length=LL, logit_length=TL),
    "ctc_loss_v1": dict(labels=LAB_V1, inputs=X_TM, sequence_length=TL, label_length=LL),
    "ctc_batch_cost": dict(y_true=LAB_V1, y_pred=PROBS, input_length=TL[:, None], label_length=LL[:, None]),
    "ctc_greedy_decoder": dict(inputs=X_TM, sequence_length=TL),
    "ctc_beam_search_decoder": dict(inputs=X_TM, sequence_length=TL, beam_width=4, top_paths=2),
    "ctc_decode": dict(y_pred=PROBS, input_length=TL),
    "ctc_align": dict(log_probs=LOGP, labels=LAB, input_length=TL, label_length=LL),
    "ctc_segments": dict(path=np.array([0, 1, 1, 0, 2])),
    "ctc_unique_labels": dict(labels=LAB),
    "ctc_segment": dict(log_probs=LOGP, utterances=[[[1, 2], [3]], [[2]]], input_length=TL),
}
FLOAT_ARG = {"ctc_loss": "logits", "ctc_loss_v1": "inputs", "ctc_batch_cost": "y_pred",
             "ctc_greedy_decoder": "inputs", "ctc_beam_search_decoder": "inputs", "ctc_decode": "y_pred",
             "ctc_align": "log_probs"}
TIME_MAJOR = {"ctc_loss", "ctc_loss_v1", "ctc_greedy_decoder", "ctc_beam_search_decoder"}  # (T, B, C) inputs
FRAMES_ARG = {"ctc_loss": "logit_length", "ctc_loss_v1": "sequence_length", "ctc_batch_cost": "input_length",
              "ctc_greedy_decoder": "sequence_length", "ctc_beam_search_decoder": "sequence_length",
              "ctc_decode": "input_length", "ctc_align": "input_length"}
LABELS_ARG = {"ctc_loss": "labels", "ctc_loss_v1": "labels", "ctc_batch_cost": "y_true", "ctc_align": "labels"}
FLAGS = {"ctc_loss": ["logits_time_major", "zero_infinity", "return_grad"],
         "ctc_loss_v1": ["preprocess_collapse_repeated", "ctc_merge_repeated", "ignore_longer_outputs_than_inputs",
                         "time_major", "return_grad"],
         "ctc_batch_cost": ["return_grad"], "ctc_greedy_decoder": ["merge_repeated", "time_major"],
         "ctc_beam_search_decoder": ["merge_repeated", "time_major"], "ctc_decode": ["greedy"],
         "ctc_align": ["time_major", "normalize", "partial"], "ctc_segment": ["time_major", "normalize"]}
THREADED = [f for f in GOOD if f not in ("ctc_segments", "ctc_unique_labels")]


def snapshot(value):
    if sp.issparse(value):
        return value.copy()
    if isinstance(value, np.ndarray) and value.nbytes > 2**28:
        return None  # a huge broadcast view (read-only): nothing to compare
    return copy.deepcopy(value)


def unchanged(before, after):
    if before is None:
        return True
    if sp.issparse(before):
        return (before != after).nnz == 0 and before.format == after.format
    if isinstance(before, np.ndarray):
        return before.dtype == after.dtype and before.shape == after.shape and before.tobytes() == after.tobytes()
    if isinstance(before, (list, tuple)):
        return type(before) is type(after) and len(before) == len(after) and all(
            unchanged(u, v) for u, v in zip(before, after))
    return True


def call(fn, **over):
    """Call cyctc.<fn> with its good arguments overridden; assert afterwards that no argument was modified."""
    kw = dict(GOOD[fn], **over)
    before = {k: snapshot(v) for k, v in kw.items()}
    try:
        return getattr(cyctc, fn)(**kw)
    finally:
        for k, v in kw.items():
            assert unchanged(before[k], v), f"{fn} modified its argument {k}"


def expect(exc, words, fn, **over):
    with pytest.raises(exc) as info:
        call(fn, **over)
    for w in ([words] if isinstance(words, str) else words):
        assert w in str(info.value), f"{fn}: {info.value!r} does not name {w!r}"


def broadcast_huge(shape):
    """A (huge) read-only view of a tiny array: nothing of that size is ever allocated."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=shape, strides=(0, 0, 0),
                                           writeable=False)


# ----------------------------------------------------------------------------------------- float inputs


def _float_cases():
    bad = [
        (lambda x: x[0], ValueError), (lambda x: x[..., None], ValueError),          # rank 2, rank 4
        (lambda x: x.astype(np.int32), TypeError), (lambda x: x.astype(object), TypeError),
        (lambda x: x.astype(np.complex128), TypeError), (lambda x: x.astype(np.longdouble), TypeError),
        (lambda x: x.astype(bool), TypeError), (lambda x: np.full(x.shape, "a"), TypeError),
        (lambda x: None, TypeError), (lambda x: x.tolist() + [[[1.0]]], TypeError),     # ragged nested list
    ]
    if np.dtype(np.longdouble).itemsize <= 8:  # longdouble is plain double on this platform
        del bad[5]
    for fn, arg in FLOAT_ARG.items():
        for i, (make, exc) in enumerate(bad):
            yield pytest.param(fn, arg, make, exc, id=f"{fn}-{arg}-{i}")


@pytest.mark.parametrize("fn,arg,make,exc", list(_float_cases()))
def test_bad_float_input(fn, arg, make, exc):
    expect(exc, arg, fn, **{arg: make(GOOD[fn][arg])})


@pytest.mark.parametrize("fn", list(FLOAT_ARG))
def test_empty_class_axis_and_huge_views(fn):
    arg = FLOAT_ARG[fn]
    empty = np.zeros((T, B, 0)) if fn in TIME_MAJOR else np.zeros((B, T, 0))
    expect(ValueError, arg, fn, **{arg: empty})
    # an axis of 2**31, and B * T * C beyond 2**59 (int64 byte counts would overflow): refused before allocation
    for shape in [(2**31, B, C), (2**30, 1, 2**30)]:
        if fn not in TIME_MAJOR:
            shape = (shape[1], shape[0], shape[2])
        expect(ValueError, [arg, "too large", f"of shape {shape}"], fn, **{arg: broadcast_huge(shape)})


# ----------------------------------------------------------------------------------------- lengths


LENGTH_ARGS = [(fn, FRAMES_ARG[fn]) for fn in FRAMES_ARG] + [
    ("ctc_loss", "label_length"), ("ctc_loss_v1", "label_length"), ("ctc_batch_cost", "label_length"),
    ("ctc_align", "label_length")]


@pytest.mark.parametrize("fn,arg", LENGTH_ARGS, ids=[f"{f}-{a}" for f, a in LENGTH_ARGS])
def test_bad_lengths(fn, arg):
    good = np.asarray(GOOD[fn][arg]).reshape(-1)
    big = T + 1 if "label" not in arg else LAB.shape[1] + 1
    cases = [
        (np.array([good[0], -1]), ValueError), (np.array([big, 1]), ValueError),
        (np.array([good[0], 2**40]), ValueError), (np.array([2**63, 1], np.uint64), ValueError),
        (good[:1], ValueError), (np.array([1, 1, 1]), ValueError), (good[None, :], ValueError),
        (np.array([np.nan, 1.0]), ValueError), (np.array([np.inf, 1.0]), ValueError),
        (good.astype(object), TypeError), (good.astype(bool), TypeError),
        (np.array(["a", "b"]), TypeError), ([1, 2**70], TypeError), (3, ValueError),
    ]
    if (fn, arg) in KERAS_FLOAT_LENGTHS:
        # Keras casts its lengths: whole numbers in a float array mean what they say, fractions are refused
        assert_same_result(call(fn, **{arg: np.asarray(GOOD[fn][arg]).astype(np.float32)}), call(fn))
        cases += [(good + 0.5, ValueError), (np.array([1e300, 1.0]), ValueError)]
    else:
        cases.append((good.astype(np.float64), TypeError))
    for value, exc in cases:
        expect(exc, arg, fn, **{arg: value})


KERAS_FLOAT_LENGTHS = {("ctc_batch_cost", "input_length"), ("ctc_batch_cost", "label_length"),
                       ("ctc_decode", "input_length")}


@pytest.mark.parametrize("fn", ["ctc_loss", "ctc_loss_v1", "ctc_batch_cost", "ctc_align", "ctc_greedy_decoder"])
def test_strided_reversed_and_foreign_byte_order_lengths(fn):
    """Lengths given as strided, reversed or big-endian int32 views mean what they say (they were once read as
    contiguous memory: wrong results, and a read past the buffer for reversed views)."""
    ref = call(fn)
    arg = FRAMES_ARG[fn]
    good = np.asarray(GOOD[fn][arg]).reshape(-1).astype(np.int32)
    variants = [np.repeat(good, 3)[::3], good[::-1].copy()[::-1], good.astype(">i4")]
    if fn == "ctc_batch_cost":
        variants = [v[:, None] for v in variants] + [np.stack([good, good + 7], axis=1)[:, :1]]
    for v in variants:
        out = call(fn, **{arg: v})
        assert_same_result(out, ref)


def assert_same_result(a, b):
    if isinstance(a, np.ndarray) or np.isscalar(a):
        a, b = np.asarray(a), np.asarray(b)  # (answers keep the inputs' byte order: compare native values)
        a, b = a.astype(a.dtype.newbyteorder("=")), b.astype(b.dtype.newbyteorder("="))
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    elif hasattr(a, "indices") and hasattr(a, "values"):
        assert_same_result(a.indices, b.indices)
        assert_same_result(a.values, b.values)
    else:
        assert len(a) == len(b)
        for u, v in zip(a, b):
            assert_same_result(u, v)


# ----------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("fn", list(LABELS_ARG))
def test_bad_labels(fn):
    arg = LABELS_ARG[fn]
    good = GOOD[fn][arg]
    blank = 0 if fn in ("ctc_loss", "ctc_align") else C - 1
    high = good.copy()
    high[0, 1] = C
    neg = good.copy()
    neg[0, 2] = -1
    on_blank = good.copy()
    on_blank[1, 0] = blank
    huge = good.astype(np.int64)
    huge[0, 0] = 2**40
    expect(ValueError, f"{arg}[0, 1]", fn, **{arg: high})
    expect(ValueError, f"{arg}[0, 2]", fn, **{arg: neg})
    expect(ValueError, [f"{arg}[1, 0]", "blank"], fn, **{arg: on_blank})
    expect(ValueError, f"{arg}[0, 0]", fn, **{arg: huge})
    expect(ValueError, f"{arg}[0, 0]", fn, **{arg: good.astype(np.uint64) + np.uint64(2**63)})
    expect(ValueError, arg, fn, **{arg: good[0]})                 # rank 1
    expect(ValueError, arg, fn, **{arg: np.vstack([good, good])})  # 4 rows for a batch of 2
    expect(TypeError, arg, fn, **{arg: good.astype(object)})
    expect(TypeError, arg, fn, **{arg: good.astype(bool)})
    expect(TypeError, arg, fn, **{arg: None})
    if fn == "ctc_batch_cost":  # Keras casts float labels: whole numbers pass, others are refused
        expect(ValueError, arg, fn, **{arg: good + 0.5})
        expect(ValueError, arg, fn, **{arg: np.where(good == 1, np.nan, good)})
    else:
        expect(TypeError, arg, fn, **{arg: good.astype(np.float64)})
    # garbage beyond label_length is ignored (documented): same result as zero padding
    padded = good.astype(np.int64)
    padded[1, 2] = 2**40
    assert_same_result(call(fn, **{arg: padded}), call(fn))


def test_labels_given_as_lists():
    lists = LAB.tolist()
    assert_same_result(cyctc.ctc_loss(lists, X_TM, LL.tolist(), TL.tolist()), cyctc.ctc_loss(LAB, X_TM, LL, TL))
    expect(TypeError, "labels", "ctc_loss", labels=[[1, 2, 3], [2]])                  # ragged
    expect(ValueError, "label_length", "ctc_align", labels=[[1, 2, 3], [2, 2]])      # ragged + label_length
    expect(ValueError, "labels", "ctc_align", labels=[[[1], [2]], [2]], label_length=None)
    expect(TypeError, "labels", "ctc_align", labels=[[1.5], [2.0, 1.0]], label_length=None)
    expect(ValueError, "labels", "ctc_align", labels=[[1], [2], [3]], label_length=None)
    # empty label rows and empty batches are fine
    out = cyctc.ctc_loss([[], []], X_TM, [0, 0], TL)
    assert out.shape == (2,) and np.all(np.isfinite(out))
    res = cyctc.ctc_align(LOGP, [[], []])
    assert np.all(res.feasible) and np.all(res.path == 0)
    assert cyctc.ctc_align(LOGP[:0], []).path.shape == (0, T)


# ----------------------------------------------------------------------------------------- sparse labels


def _coo(rows, cols, vals, shape=(B, 4)):
    return sp.coo_matrix((np.array(vals), (np.array(rows), np.array(cols))), shape=shape)


@pytest.mark.parametrize("fn", ["ctc_loss", "ctc_loss_v1", "ctc_align"])
def test_sparse_labels(fn):
    arg = LABELS_ARG[fn]
    good = GOOD[fn][arg]
    rows, cols = np.nonzero(np.arange(good.shape[1]) < LL[:, None])
    vals = good[rows, cols]
    kw = {"label_length": None}
    ref = call(fn)
    # out-of-order COO entries, CSR, CSC, a declared width far beyond the labels: all the same labels
    order = np.random.default_rng(1).permutation(len(rows))
    coo = _coo(rows[order], cols[order], vals[order])
    wide = _coo(rows, cols, vals, shape=(B, 10**12))
    for m in (coo, coo.tocsr(), coo.tocsc(), sp.coo_array(coo), wide):
        assert_same_result(call(fn, **{arg: m}, **kw), ref)
    # duplicates (COO, and CSR not in canonical form), gaps, float values, wrong rows, label_length given
    expect(ValueError, [arg, "duplicate"], fn, **{arg: _coo([0, 0, 1], [0, 0, 0], [1, 1, 2])}, **kw)
    dup_csr = sp.csr_matrix((np.array([1, 1, 2]), np.array([0, 0, 0]), np.array([0, 2, 3])), shape=(B, 4))
    expect(ValueError, [arg, "duplicate"], fn, **{arg: dup_csr}, **kw)
    expect(ValueError, [arg, "gap"], fn, **{arg: _coo([0, 0, 1], [0, 2, 0], [1, 1, 2])}, **kw)
    expect(TypeError, arg, fn, **{arg: _coo([0, 1], [0, 0], [1.0, 2.0])}, **kw)
    expect(ValueError, [arg, "batch size"], fn, **{arg: _coo([0, 2], [0, 0], [1, 1], shape=(3, 4))}, **kw)
    expect(ValueError, "label_length", fn, **{arg: coo, "label_length": LL})
    blank = 0 if fn != "ctc_loss_v1" else C - 1
    expect(ValueError, [f"{arg}[1, 0]", "blank"], fn, **{arg: _coo([0, 1], [0, 0], [1, blank])}, **kw)
    # an empty batch of sparse labels
    if fn == "ctc_loss":
        out = cyctc.ctc_loss(sp.csr_matrix((0, 3), dtype=np.int32), np.zeros((T, 0, C)))
        assert out.shape == (0,)


def test_unique_mismatch():
    uy, ui = cyctc.ctc_unique_labels(LAB)
    expect(TypeError, "unique", "ctc_loss", unique=(uy,))
    expect(TypeError, "unique", "ctc_loss", unique=uy)
    expect(TypeError, "unique", "ctc_loss", unique=(uy.astype(float), ui))
    expect(TypeError, "unique", "ctc_loss", unique=(None, None))
    expect(ValueError, "unique", "ctc_loss", unique=(uy[:, :2], ui[:, :2]))
    expect(ValueError, "unique", "ctc_loss", unique=(uy, np.zeros_like(ui)))          # does not map back
    expect(ValueError, "unique", "ctc_loss", unique=(uy, ui + 5))                     # out of range
    expect(ValueError, "unique", "ctc_loss", unique=(uy, ui.astype(np.uint64) + np.uint64(2**63)))
    expect(ValueError, "unique", "ctc_loss", unique=cyctc.ctc_unique_labels(LAB[::-1]))
    coo = sp.coo_matrix(LAB)
    expect(ValueError, "unique", "ctc_loss", labels=coo, label_length=None, unique=(uy, ui))
    assert_same_result(call("ctc_loss", unique=(uy, ui)), call("ctc_loss"))
    assert_same_result(call("ctc_loss", unique=[uy, ui]), call("ctc_loss"))


# ----------------------------------------------------------------------------------------- scalars


@pytest.mark.parametrize("fn", list(FLAGS))
def test_bad_flags(fn):
    for flag in FLAGS[fn]:
        expect(TypeError, flag, fn, **{flag: np.array([True, False])})
        expect(TypeError, flag, fn, **{flag: "False"})
        expect(TypeError, flag, fn, **{flag: None})
        expect(ValueError, flag, fn, **{flag: 2})


@pytest.mark.parametrize("fn", THREADED)
def test_bad_num_threads(fn):
    expect(ValueError, "num_threads", fn, num_threads=0)
    expect(TypeError, "num_threads", fn, num_threads=1.5)
    expect(TypeError, "num_threads", fn, num_threads="2")
    expect(TypeError, "num_threads", fn, num_threads=True)
    ref = call(fn, num_threads=1)
    for n in (2**40, -2**40, np.int64(3), -1, None):  # absurd counts are capped: same result
        assert_same_result(call(fn, num_threads=n), ref)


def test_absurd_thread_count_does_not_crash():
    """num_threads=10**6 once made OpenMP try to start a million threads and the process died (SIGSEGV)."""
    code = textwrap.dedent("""
        import numpy as np, cyctc
        x = np.zeros((4, 1, 3))
        print(float(cyctc.ctc_loss([[1]], x, [1], None, num_threads=10**6)[0]))
        print(cyctc.ctc_align(x, [[1]], num_threads=10**6, time_major=True).feasible[0])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [repr(float(cyctc.ctc_loss([[1]], np.zeros((4, 1, 3)), [1], None)[0])), "True"]


def test_bad_blank_index_and_reduction():
    for fn in ("ctc_loss", "ctc_greedy_decoder", "ctc_align"):
        expect(ValueError, "blank_index", fn, blank_index=C)
        expect(ValueError, "blank_index", fn, blank_index=-C - 1)
        expect(TypeError, "blank_index", fn, blank_index=1.0)
        expect(TypeError, "blank_index", fn, blank_index=True)
        expect(TypeError, "blank_index", fn, blank_index="0")
    for r in ("avg", None, 0, "MEAN"):
        expect(ValueError, "reduction", "ctc_loss", reduction=r)


@pytest.mark.parametrize("fn", ["ctc_beam_search_decoder", "ctc_decode"])
def test_bad_beam_sizes(fn):
    extra = {"greedy": False} if fn == "ctc_decode" else {}
    for w, k, exc, word in [(0, 1, ValueError, "beam_width"), (-1, 1, ValueError, "beam_width"),
                            (2**40, 1, ValueError, "beam_width"), (2.0, 1, TypeError, "beam_width"),
                            (None, 1, TypeError, "beam_width"), (4, 0, ValueError, "top_paths"),
                            (4, 5, ValueError, "top_paths"), (4, 1.0, TypeError, "top_paths")]:
        expect(exc, word, fn, beam_width=w, top_paths=k, **extra)


def test_segments_and_unique_labels_bad_input():
    expect(ValueError, "path", "ctc_segments", path=np.array([[0, 1]]))
    expect(TypeError, "path", "ctc_segments", path=np.array([0.0, 1.0]))
    expect(TypeError, "path", "ctc_segments", path=None)
    expect(TypeError, "blank", "ctc_segments", blank=0.5)
    expect(ValueError, "path[2] = -3", "ctc_segments", path=np.array([0, 1, -3, 1]))  # was silently dropped
    assert cyctc.ctc_segments(np.array([1, -2, 1, -1, -7])) == [(0, 1, 1), (2, 3, 1)]  # past the -1: not read
    expect(TypeError, "labels", "ctc_unique_labels", labels=np.array([[1.0]]))
    expect(ValueError, "labels", "ctc_unique_labels", labels=np.array([1, 2]))
    expect(TypeError, "labels", "ctc_unique_labels", labels=sp.csr_matrix(LAB))


# ----------------------------------------------------------------------------------------- documented results


def test_empty_batches_and_zero_frames():
    e_tm, e_bm = np.zeros((T, 0, C)), np.zeros((0, T, C))
    none = np.zeros(0, np.int32)
    loss, grad = cyctc.ctc_loss(np.zeros((0, 3), np.int32), e_tm, none, none, return_grad=True)
    assert loss.shape == (0,) and grad.shape == e_tm.shape
    assert np.isnan(cyctc.ctc_loss(np.zeros((0, 3), np.int32), e_tm, none, none, reduction="mean"))
    assert cyctc.ctc_loss(np.zeros((0, 3), np.int32), e_tm, none, none, reduction="sum") == 0
    assert cyctc.ctc_loss_v1(np.zeros((0, 3), np.int32), e_tm, none, label_length=none).shape == (0,)
    assert cyctc.ctc_batch_cost(np.zeros((0, 3)), e_bm, none, none).shape == (0, 1)
    assert cyctc.ctc_greedy_decoder(e_tm, none).neg_sum_logits.shape == (0, 1)
    r = cyctc.ctc_beam_search_decoder(e_tm, none, 3, 2)
    assert r.log_probabilities.shape == (0, 2) and len(r.decoded) == 2
    assert cyctc.ctc_decode(e_bm, none)[0][0].shape == (0, T)
    assert cyctc.ctc_decode(e_bm, none, greedy=False)[0][0].shape == (0, T)
    assert cyctc.ctc_align(e_bm, np.zeros((0, 2), int), none).path.shape == (0, T)
    # no frames: an empty label costs 0, any other label is infeasible
    x0 = np.zeros((0, 2, C))
    assert list(cyctc.ctc_loss(np.array([[1], [1]]), x0, [0, 1], None)) == [0.0, np.inf]
    assert cyctc.ctc_greedy_decoder(x0, None).decoded[0].dense_shape.tolist() == [2, 0]
    assert cyctc.ctc_align(x0.swapaxes(0, 1), [[], [1]]).feasible.tolist() == [True, False]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs_give_documented_results(bad):
    x = X_TM.copy()
    x[3, 1, 2] = bad
    loss, grad = cyctc.ctc_loss(LAB, x, LL, TL, return_grad=True)
    clean = cyctc.ctc_loss(LAB, X_TM, LL, TL)
    assert loss[0] == clean[0] and np.isnan(loss[1]) and np.all(np.isnan(grad[:TL[1], 1]))
    v1 = cyctc.ctc_loss_v1(LAB_V1, x, TL, label_length=LL)
    assert np.isfinite(v1[0]) and np.isnan(v1[1])
    g = cyctc.ctc_greedy_decoder(x, TL)  # (the arg-max of a row holding NaN is not specified)
    assert np.isfinite(g.neg_sum_logits[0, 0])
    r = cyctc.ctc_beam_search_decoder(x, TL, 4, 2)
    assert np.all(np.isnan(r.log_probabilities[1])) and np.all(np.isfinite(r.log_probabilities[0]))
    assert all(len(d.to_list()[1]) == 0 for d in r.decoded)
    a = cyctc.ctc_align(x.swapaxes(0, 1), LAB, TL, LL, time_major=False, normalize=True)
    assert a.feasible.tolist() == [True, False] and np.isnan(a.log_prob[1]) and np.all(a.path[1] == -1)
    # beyond the valid frames nothing is read
    x = X_TM.copy()
    x[9, 1, :] = bad
    assert_same_result(cyctc.ctc_loss(LAB, x, LL, TL), clean)
    # Keras: probabilities that are negative or NaN give NaN losses (log of a negative number), no exception
    y = PROBS.copy()
    y[1, 2, 0] = -0.5 if bad == np.inf else np.nan
    out = cyctc.ctc_batch_cost(LAB_V1, y, TL, LL)
    assert np.isfinite(out[0, 0]) and np.isnan(out[1, 0])


def test_infeasible_and_too_long_examples():
    tl = np.array([10, 1])
    loss, grad = cyctc.ctc_loss(LAB, X_TM, LL, tl, return_grad=True)
    assert np.isposinf(loss[1]) and np.all(grad[:, 1] == 0)
    assert cyctc.ctc_loss(LAB, X_TM, LL, tl, zero_infinity=True)[1] == 0
    expect(ValueError, ["longer", "example 1"], "ctc_loss_v1", sequence_length=tl)
    expect(ValueError, ["y_true", "y_pred", "example 1"], "ctc_batch_cost", input_length=tl)
    out = cyctc.ctc_loss_v1(LAB_V1, X_TM, tl, label_length=LL, ignore_longer_outputs_than_inputs=True)
    assert out[1] == 0
    assert cyctc.ctc_align(LOGP, LAB, tl, LL).feasible.tolist() == [True, False]


def test_foreign_layouts_give_the_same_bits():
    """Big-endian, unaligned, Fortran-ordered, read-only and negative-stride inputs: the same results (big-endian
    floats were once read as native ones: silently wrong losses)."""
    buf = np.zeros(X_TM.nbytes + 8, np.uint8)
    unaligned = buf[1:1 + X_TM.nbytes].view(np.float64).reshape(X_TM.shape)
    unaligned[...] = X_TM
    assert not unaligned.flags.aligned
    ro = X_TM.copy()
    ro.flags.writeable = False
    variants = [X_TM.astype(">f8"), np.asfortranarray(X_TM), ro, X_TM[::-1][::-1], unaligned]
    for fn in ("ctc_loss", "ctc_loss_v1", "ctc_greedy_decoder", "ctc_beam_search_decoder"):
        arg = FLOAT_ARG[fn]
        ref = call(fn)
        for v in variants:
            assert_same_result(call(fn, **{arg: v}), ref)
    for fn in ("ctc_batch_cost", "ctc_decode", "ctc_align"):
        arg = FLOAT_ARG[fn]
        ref = call(fn)
        base = GOOD[fn][arg]
        for v in (base.astype(">f8"), np.asfortranarray(base), base[:, ::-1][:, ::-1]):
            assert_same_result(call(fn, **{arg: v}), ref)
    loss, grad = cyctc.ctc_loss(LAB, X_TM.astype(">f4"), LL, TL, return_grad=True)
    l32, g32 = cyctc.ctc_loss(LAB, X_TM.astype(np.float32), LL, TL, return_grad=True)
    assert np.array_equal(loss, l32) and np.array_equal(grad, g32)


# ----------------------------------------------------------------------------------------- audit additions


@pytest.mark.parametrize("fn", ["ctc_loss", "ctc_loss_v1", "ctc_batch_cost", "ctc_align"])
def test_memory_limit_beyond_int64_means_no_bound(fn):
    """memory_limit=2**63 (or more) once raised OverflowError from the int64 conversion; a budget beyond any
    machine bounds nothing: the same result as the default."""
    ref = call(fn)
    for limit in (2**63 - 1, 2**63, 2**70):
        assert_same_result(call(fn, memory_limit=limit), ref)
    expect(TypeError, "memory_limit", fn, memory_limit=2.0**70)


@pytest.mark.parametrize("return_grad", [False, True])
def test_loss_memory_limit_below_one_double_is_enforced(return_grad):
    """A budget of 1..7 bytes once became 0 doubles in _cpu, which means "no bound": the call ran unbounded
    instead of raising the documented MemoryError."""
    for limit in (1, 7, 8):
        with pytest.raises(MemoryError, match="memory_limit of %d bytes" % limit):
            call("ctc_loss", memory_limit=limit, return_grad=return_grad)


def test_memory_limit_environment_beyond_int64(monkeypatch):
    monkeypatch.setenv("CYCTC_MEMORY_LIMIT", "99999999999999T")
    assert_same_result(call("ctc_loss"), cyctc.ctc_loss(LAB, X_TM, LL, TL, memory_limit=2**30))


def test_segment_empty_batch_and_sparse_scores():
    """(0, T, C) scores with no transcripts once raised numpy's 'zero-size array to reduction' (naming nothing);
    scipy.sparse scores raised IndexError."""
    assert cyctc.ctc_segment(np.zeros((0, T, C)), []) == []
    expect(ValueError, "utterances", "ctc_segment", log_probs=np.zeros((0, T, C)), utterances=[[[1]]])
    expect(TypeError, "log_probs", "ctc_segment", log_probs=sp.csr_matrix(LOGP[0]))
    # an empty transcript is one recording with nothing to find: all of it untranscribed
    res = cyctc.ctc_segment(LOGP[0], [])
    assert res.start.shape == (0,) and res.feasible
    assert np.isclose(res.log_prob, LOGP[0].max(axis=1).sum())


def test_unique_labels_bad_containers_name_labels():
    expect(ValueError, "labels", "ctc_unique_labels", labels=[[1, 2], [1]])           # ragged
    expect(TypeError, ["labels", "csr_matrix"], "ctc_unique_labels", labels=sp.csr_matrix(LAB))
    uy, ui = cyctc.ctc_unique_labels([[], []])
    assert uy.shape == ui.shape == (2, 0) and uy.dtype.kind == "i"


def test_sparse_decoded_to_dense_arguments():
    """default=2.5 was silently truncated to 2, default='x' raised a ValueError naming nothing, default=2**70 an
    OverflowError."""
    d = cyctc.ctc_greedy_decoder(X_TM, TL).decoded[0]
    expect_raises = [(2.5, TypeError), ("x", TypeError), (None, TypeError), (2**70, ValueError)]
    for value, exc in expect_raises:
        with pytest.raises(exc, match="default"):
            d.to_dense(default=value)
    dense = d.to_dense(default=np.int8(-7), maxlen=20)
    assert dense.shape == (B, 20) and dense.dtype == np.int64
    for b, seq in enumerate(d.to_list()):
        assert np.array_equal(dense[b, :len(seq)], seq) and np.all(dense[b, len(seq):] == -7)


def test_align_result_segments_arguments():
    res = cyctc.ctc_align(LOGP, LAB, TL, LL)
    assert res.segments(-1) == res.segments(B - 1) == cyctc.ctc_segments(res.path[B - 1])
    with pytest.raises(IndexError, match="b = 2"):
        res.segments(2)
    with pytest.raises(TypeError, match="b must be an int"):
        res.segments(1.0)
    with pytest.raises(ValueError, match="blank must be in"):  # the argument is "blank", not "blank_index"
        res.segments(0, blank=-C - 1)
    assert res.segments(0, blank=-C) == res.segments(0)


def test_ctc_decode_checks_beam_sizes_even_when_greedy():
    """greedy=True ignores beam_width/top_paths (as Keras), but nonsense there is still refused, not ignored."""
    for w, k, exc, word in [(0, 1, ValueError, "beam_width"), ("10", 1, TypeError, "beam_width"),
                            (4, 5, ValueError, "top_paths"), (4, None, TypeError, "top_paths")]:
        expect(exc, word, "ctc_decode", beam_width=w, top_paths=k, greedy=True)
    assert_same_result(call("ctc_decode", beam_width=3, top_paths=2), call("ctc_decode"))


def test_segment_bad_input():
    """ctc_segment, batched (B, T, C) with one transcript per recording: every malformed argument is named."""
    fn = "ctc_segment"
    x = GOOD[fn]["log_probs"]
    for bad, exc in [(x.astype(np.int32), TypeError), (x.astype(complex), TypeError), (x.astype(bool), TypeError),
                     (x.astype(object), TypeError), (x[..., None], ValueError), (x[0, 0], ValueError),
                     (None, TypeError), (np.zeros((B, T, 0)), ValueError)]:
        expect(exc, "log_probs", fn, log_probs=bad)
    for bad, exc in [(np.array([T + 1, 1]), ValueError), (np.array([-1, 1]), ValueError), (TL[:1], ValueError),
                     (TL.astype(float), TypeError), (np.array([np.nan, 1.0]), ValueError)]:
        expect(exc, "input_length", fn, input_length=bad)
    for bad, exc, words in [([[[1]]], ValueError, "utterances"), ([[[1]], [[]]], ValueError, "utterances[1][0]"),
                            ([[[1]], [[C]]], ValueError, "utterances[1][0][0]"),
                            ([[[1]], [[0]]], ValueError, ["utterances[1][0][0]", "blank"]),
                            ([[[1]], [[1.0]]], TypeError, "utterances[1][0]"), ([[[1]], "ab"], TypeError,
                                                                                  "utterances[1]"),
                            (None, ValueError, "utterances"), ([[[1]], [[-1]]], ValueError, "utterances[1][0][0]")]:
        expect(exc, words, fn, utterances=bad)
    for bad, exc in [(C, ValueError), (-C - 1, ValueError), (0.0, TypeError), ("0", TypeError)]:
        expect(exc, "blank_index", fn, blank_index=bad)
    for bad, exc in [(-1.0, ValueError), (np.nan, ValueError), (np.inf, ValueError), ("1", TypeError),
                     (True, TypeError), (np.array([1.0]), TypeError)]:
        expect(exc, "untranscribed_penalty", fn, untranscribed_penalty=bad)
    expect(ValueError, "memory_limit", fn, memory_limit=0)
    with pytest.raises(MemoryError, match="memory_limit"):
        call(fn, memory_limit=100)
    # the same recordings one at a time give the same results
    res = call(fn)
    for b in range(B):
        one = cyctc.ctc_segment(x[b, :TL[b]], GOOD[fn]["utterances"][b])
        assert np.array_equal(one.start, res[b].start) and np.array_equal(one.end, res[b].end)
        assert one.log_prob == res[b].log_prob
