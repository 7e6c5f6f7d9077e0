"""The fast acceptance test of normalize_loss_args (``_cpu.accept_loss_args``) against the full path it shortcuts.

The fast path may only ever say "these are the normalised arguments" for calls the full path accepts, and must then
build the very same arrays: same results to the bit, same layouts. For anything else it must decline, so that every
error still comes from the full path, word for word. ``full_path_only`` forces the full path by making the fast
test decline everything; ``fast_taken`` records whether it accepted.
"""
import contextlib
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import cyctc
from cyctc import _args, _cpu, _threads
from spies import acceptance_spy


@contextlib.contextmanager
def full_path_only(monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(_cpu, "accept_loss_args", lambda *args: None)
        yield


@pytest.fixture
def fast_taken(monkeypatch):
    """A list that gets, per normalize_loss_args call, whether the fast test accepted the arguments."""
    return acceptance_spy(monkeypatch, _cpu, "accept_loss_args")


def outcome(fn, *args, **kw):
    """("ok", results as (dtype, shape, strides, contiguity, bytes) tuples) or ("error", type, message)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither path may warn where the other does not
        try:
            r = fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - the exact exception is what is compared
            return "error", type(e), str(e)
    r = r if isinstance(r, tuple) else (r,)
    return ("ok",) + tuple((v.dtype.str, v.shape, v.strides, v.flags.c_contiguous, np.asarray(v).tobytes())
                           for v in r)


def normalized(*args):
    """normalize_loss_args's LossArgs (snapshot) or its exception."""
    try:
        return snapshot(_args.normalize_loss_args(*args))
    except Exception as e:  # noqa: BLE001
        return type(e), str(e)


def both_paths(monkeypatch, fn, *args, **kw):
    fast = outcome(fn, *args, **kw)
    with full_path_only(monkeypatch):
        full = outcome(fn, *args, **kw)
    return fast, full


def random_case(rng, B, T, C, L, blank, time_major, fdt, ldt, lendt, tl_none, garbage):
    """Valid labels (never the blank) with lengths; with ``garbage`` the entries past each length are wild."""
    x = rng.standard_normal((T, B, C) if time_major else (B, T, C)).astype(fdt)
    b = blank % C
    ll = rng.integers(0, L + 1, B)
    lab = rng.integers(0, C - 1, (B, L))
    lab = np.where(lab >= b, lab + 1, lab)
    if garbage:
        wild = rng.integers(np.iinfo(ldt).min, np.iinfo(ldt).max, (B, L), dtype=ldt, endpoint=True)
        lab = np.where(np.arange(L) >= ll[:, None], wild, lab)
    tl = None if tl_none else rng.integers(0, T + 1, B).astype(lendt)
    return lab.astype(ldt), x, ll.astype(lendt), tl


def snapshot(a):
    """Everything a LossArgs holds, arrays down to their strides and bytes (but for the huge views of
    test_size_limits_are_check_sizes, which tobytes would make real)."""
    out = {}
    for k in _args.LossArgs.__slots__:
        v = getattr(a, k)
        if isinstance(v, np.ndarray):
            v = (v.dtype.str, v.shape, v.strides, v.flags.c_contiguous, v.flags.aligned,
                 v.tobytes() if v.size <= 2**24 else None)
        out[k] = v
    return out


def assert_same_loss_args(monkeypatch, *args):
    fast = normalized(*args)
    with full_path_only(monkeypatch):
        full = normalized(*args)
    assert fast == full
    return fast


CASES = [(i, blank, tm, fdt, ldt, lendt) for i, (blank, tm, fdt, ldt, lendt) in enumerate(
    (blank, tm, fdt, ldt, lendt)
    for blank in (None, 0, -1, "mid") for tm in (True, False) for fdt in (np.float32, np.float64)
    for ldt in (np.int32, np.int64) for lendt in (np.int32, np.int64))]


@pytest.mark.parametrize("i,blank,tm,fdt,ldt,lendt", CASES)
def test_fast_and_full_paths_give_the_same_bits(monkeypatch, fast_taken, i, blank, tm, fdt, ldt, lendt):
    rng = np.random.default_rng(i)
    for k in range(6):
        B, T, C, L = (int(n) for n in rng.integers(1, [6, 14, 8, 6]))
        C += 1
        bi = C // 2 if blank == "mid" else blank
        lab, x, ll, tl = random_case(rng, B, T, C, L, 0 if bi is None else bi, tm, fdt, ldt, lendt,
                                     tl_none=k % 3 == 0, garbage=k % 2 == 0)
        for reduction in ("none", "sum", "mean"):
            for grad in (False, True):
                del fast_taken[:]
                fast, full = both_paths(monkeypatch, cyctc.ctc_loss, lab, x, ll, tl, tm, None, bi,
                                        reduction=reduction, return_grad=grad, num_threads=1 + k % 2)
                assert fast_taken == [True]  # the fast path really ran (and the full path after it)
                assert fast[0] == "ok" and fast == full
        assert_same_loss_args(monkeypatch, lab, x, ll, tl, tm, None, bi)


def test_v1_and_keras_share_the_fast_path(monkeypatch, fast_taken):
    rng = np.random.default_rng(5)
    B, T, C = 4, 12, 6
    x = rng.standard_normal((T, B, C)).astype(np.float32)
    lab = rng.integers(0, C - 1, (B, 3)).astype(np.int32)  # blank C - 1
    ll = np.array([3, 2, 0, 1], np.int32)
    tl = np.array([12, 2, 5, 9], np.int32)
    short = np.array([12, 1, 5, 9], np.int32)  # example 1: more labels than frames
    probs = np.exp(x.swapaxes(0, 1)) / np.exp(x.swapaxes(0, 1)).sum(2, keepdims=True)
    calls = [
        (cyctc.ctc_loss_v1, (lab, x, tl), dict(label_length=ll)),
        (cyctc.ctc_loss_v1, (lab, x, tl), dict(label_length=ll, preprocess_collapse_repeated=True,
                                                ctc_merge_repeated=False)),
        (cyctc.ctc_loss_v1, (lab, x, short), dict(label_length=ll)),
        (cyctc.ctc_loss_v1, (lab, x, short), dict(label_length=ll, ignore_longer_outputs_than_inputs=True)),
        (cyctc.ctc_loss_v1, (lab.astype(np.int64), np.ascontiguousarray(x.swapaxes(0, 1)), tl.astype(np.int64)),
         dict(label_length=ll.astype(np.int64), time_major=False)),
        (cyctc.ctc_batch_cost, (lab, probs, tl[:, None], ll[:, None]), {}),
        (cyctc.ctc_batch_cost, (lab, probs.astype(np.float64), tl, ll), {}),
    ]
    for fn, args, kw in calls:
        for grad in (False, True):
            del fast_taken[:]
            fast, full = both_paths(monkeypatch, fn, *args, return_grad=grad, **kw)
            assert fast == full
            assert fast_taken == [True] or fast[0] == "error"


def test_odd_but_valid_inputs_give_the_same_bits(monkeypatch):
    """Layouts the fast path takes as they are (read-only, broadcast, reversed labels) or leaves to the full path
    (copies: strided, reversed, foreign byte order, unaligned, float16, other integer types, lists)."""
    rng = np.random.default_rng(3)
    lab, x, ll, tl = random_case(rng, 3, 9, 5, 4, 0, True, np.float32, np.int32, np.int32, False, True)
    ro = x.copy()
    ro.setflags(write=False)
    lab_ro = lab.copy()
    lab_ro.setflags(write=False)
    wide = rng.standard_normal((9, 3, 10)).astype(np.float32)
    unaligned = np.frombuffer(b"\0" + x.tobytes(), np.float32, offset=1).reshape(x.shape)
    logits = [x, ro, np.broadcast_to(x[:1], x.shape), wide[:, :, ::2], x[::-1], x[:, ::-1], x[:, :, ::-1],
              np.asfortranarray(x), x.astype(">f4"), x.astype(np.float16), unaligned, x[:, :, :1], x.tolist()]
    labels = [lab, lab_ro, lab[::-1], np.asfortranarray(lab), np.repeat(lab, 2, axis=1)[:, ::2], lab.astype(">i4"),
              lab.astype(np.int16), lab.astype(np.uint8), lab.tolist(), sp.coo_matrix(lab)]
    lengths = [ll, ll[::-1].copy()[::-1], ll.astype(np.int8), ll.astype(np.uint64), ll.astype(">i8"),
               ll[:, None], ll.tolist()]
    for tm in (True, False):
        for xx in logits:
            xv = xx if tm or isinstance(xx, list) else xx.swapaxes(0, 1)
            fast, full = both_paths(monkeypatch, cyctc.ctc_loss, lab, xv, ll, tl, tm, return_grad=True)
            assert fast == full
            assert_same_loss_args(monkeypatch, lab, xv, ll, tl, tm, None, None)
    for lb in labels:
        for ln in lengths:
            args = (lb, x, None if sp.issparse(lb) else ln, ln)
            fast, full = both_paths(monkeypatch, cyctc.ctc_loss, *args, return_grad=True)
            assert fast == full
            assert_same_loss_args(monkeypatch, *args, True, None, None)
    no_labels = (lab[:, :0], x, np.zeros(3, np.int32), tl)  # Lmax = 0: the full path pads to one column
    assert both_paths(monkeypatch, cyctc.ctc_loss, *no_labels, return_grad=True)[0][0] == "ok"
    assert_same_loss_args(monkeypatch, *no_labels, True, None, None)


def _bad_inputs():
    """(name, args, kwargs) of ctc_loss calls with one thing wrong, each otherwise in the fast path's case."""
    rng = np.random.default_rng(11)
    lab, x, ll, tl = random_case(rng, 3, 8, 5, 3, 0, True, np.float32, np.int32, np.int32, False, False)
    ll[:] = [3, 1, 0]
    tl[:] = [8, 6, 0]
    i32, i64 = np.int32, np.int64

    def v(**kw):
        d = dict(labels=lab, logits=x, label_length=ll, logit_length=tl)
        d.update(kw)
        return (d["labels"], d["logits"], d["label_length"], d["logit_length"])

    out = []
    for dt in (i32, i64):
        out += [
            (f"negative label_length {dt}", v(label_length=np.array([1, -1, 0], dt)), {}),
            (f"negative logit_length {dt}", v(logit_length=np.array([1, -1, 0], dt)), {}),
            (f"logit_length > T {dt}", v(logit_length=np.array([9, 1, 0], dt)), {}),
            (f"label_length > Lmax {dt}", v(label_length=np.array([4, 1, 0], dt)), {}),
            (f"label_length beyond int32 {dt}", v(label_length=np.array([1, np.iinfo(dt).max, 0], dt)), {}),
            (f"logit_length beyond int32 {dt}", v(logit_length=np.array([1, np.iinfo(dt).max, 0], dt)), {}),
            (f"label is the blank {dt}", v(labels=np.array([[1, 0, 2], [1, 1, 1], [2, 2, 2]], dt)), {}),
            (f"label is the blank -1 {dt}", v(labels=np.array([[1, 4, 2], [1, 1, 1], [2, 2, 2]], dt)),
             dict(blank_index=-1)),
            (f"label is the blank mid {dt}", v(labels=np.array([[1, 2, 1], [2, 1, 1], [2, 2, 2]], dt)),
             dict(blank_index=2)),
            (f"label == C {dt}", v(labels=np.array([[1, 5, 2], [1, 1, 1], [2, 2, 2]], dt)), {}),
            (f"label negative {dt}", v(labels=np.array([[1, 2, 3], [-1, 1, 1], [2, 2, 2]], dt)), {}),
            (f"label huge {dt}", v(labels=np.array([[1, 2, np.iinfo(dt).max], [1, 1, 1], [2, 2, 2]], dt)), {}),
        ]
    out += [
        ("labels rows", v(labels=lab[:2]), {}),
        ("label_length entries", v(label_length=ll[:2]), {}),
        ("logit_length entries", v(logit_length=np.append(tl, 1)), {}),
        ("logits batch", v(logits=x[:, :2]), {}),
        ("logits 2-D", v(logits=x[0]), {}),
        ("logits 4-D", v(logits=x[None]), {}),
        ("labels 1-D", v(labels=lab[0]), {}),
        ("labels 3-D", v(labels=lab[None]), {}),
        ("label_length 2-D", v(label_length=np.stack([ll, ll], 1)), {}),
        ("label_length 0-D", v(label_length=np.int32(1)), {}),
        ("logit_length 2-D", v(logit_length=tl[None]), {}),
        ("label_length missing", v(label_length=None), {}),
        ("label_length float", v(label_length=ll.astype(np.float32)), {}),
        ("label_length bool", v(label_length=ll.astype(bool)), {}),
        ("label_length uint64 huge", v(label_length=np.array([1, 2**63, 0], np.uint64)), {}),
        ("label_length int8 negative", v(label_length=np.array([1, -1, 0], np.int8)), {}),
        ("labels float", v(labels=lab.astype(np.float64)), {}),
        ("labels object", v(labels=lab.astype(object)), {}),
        ("logits int", v(logits=x.astype(np.int32)), {}),
        ("logits complex", v(logits=x.astype(np.complex64)), {}),
        ("logits no classes", v(logits=x[:, :, :0]), {}),
        ("logits too large", v(logits=np.broadcast_to(x[:1, :1, :1], (2**20, 3, 2**31))), {}),
        ("float16 logits, bad label", v(logits=x.astype(np.float16), labels=lab * 0), {}),
        ("byte-swapped logits, bad length", v(logits=x.astype(">f4"), logit_length=tl + 1), {}),
        ("strided logits, bad length", v(logits=np.repeat(x, 2, axis=2)[:, :, ::2], logit_length=tl + 1), {}),
        ("sparse labels with label_length", (sp.coo_matrix(lab), x, ll, tl), {}),
        ("unique mismatch", v(), dict(unique=(lab, np.zeros_like(lab)))),
        ("unique malformed", v(), dict(unique=(lab,))),
    ]
    for bi in (5, -6, 2**70, -2**70, True, np.bool_(False), 1.0, "0"):
        out.append((f"blank_index {bi!r}", v(), dict(blank_index=bi)))
    for tm in (2, None, "yes"):
        out.append((f"logits_time_major {tm!r}", v(), dict(logits_time_major=tm)))
    for nt in (0, True, 2.0):
        out.append((f"num_threads {nt!r}", v(), dict(num_threads=nt)))
    out += [("reduction", v(), dict(reduction="avg")), ("zero_infinity", v(), dict(zero_infinity=2)),
            ("return_grad", v(), dict(return_grad="yes"))]
    return out


BAD = _bad_inputs()


@pytest.mark.parametrize("name,args,kw", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_what_the_full_path_raises(monkeypatch, name, args, kw):
    for grad in (False, True):
        fast, full = both_paths(monkeypatch, cyctc.ctc_loss, *args, **dict(dict(return_grad=grad), **kw))
        assert fast[0] == "error" and fast == full


@pytest.mark.parametrize("name,args,kw", BAD, ids=[b[0] for b in BAD])
def test_fast_test_declines_bad_input(name, args, kw):
    lab, x, ll, tl = args
    tm = kw.get("logits_time_major", True)
    assert _cpu.accept_loss_args(lab, x, ll, tl, tm, kw.get("unique"), kw.get("blank_index"), 0) is None or (
        # the loss call's own arguments, checked outside normalize_loss_args
        {"num_threads", "reduction", "zero_infinity", "return_grad"} & set(kw))


def test_size_limits_are_check_sizes(monkeypatch):
    """Views at and beyond check_size's limits, taken as they are (one row of C zeros repeated: a few MB in all;
    normalisation only, no kernel)."""
    for B, T, C in [(2**20, 2**20, 2**19), (2**20, 2**20, 2**19 + 1), (1, 2**31 - 1, 2), (1, 2**31, 2)]:
        row = np.zeros(C, np.float32)
        x = np.lib.stride_tricks.as_strided(row, shape=(B, T, C), strides=(0, 0, 4), writeable=False)
        lab, ll = np.ones((B, 1), np.int32), np.ones(B, np.int32)
        got = assert_same_loss_args(monkeypatch, lab, x, ll, None, False, None, None)
        assert isinstance(got, dict) == (B * T * C <= 2**59 and T < 2**31)  # accepted, or the full path's error
    assert _cpu.accept_loss_args(lab, x, ll, None, False, None, None, 0) is None


def test_garbage_past_the_lengths_is_ignored(fast_taken):
    rng = np.random.default_rng(2)
    lab, x, ll, tl = random_case(rng, 4, 10, 6, 5, 0, True, np.float32, np.int64, np.int32, False, False)
    ll[:] = [5, 3, 0, 1]
    wild = lab.copy()
    wild[1, 3:] = [0, -2**62]  # the blank, and far outside int32: never read
    wild[2, :] = 2**40
    wild[3, 1:] = 6
    for grad in (False, True):
        assert outcome(cyctc.ctc_loss, wild, x, ll, tl, return_grad=grad) == \
            outcome(cyctc.ctc_loss, lab, x, ll, tl, return_grad=grad)
    assert fast_taken == [True] * 4


def test_float32_losses_beyond_range_are_inf_without_warning():
    x = np.full((8, 3, 5), -3e38, np.float32)
    x[:, :, 0] = 3e38  # each label frame costs 6e38 nats: losses beyond float32, finite in float64
    lab = np.array([[1, 2, 3], [1, 1, 1], [2, 2, 2]], np.int32)
    ll = np.array([3, 1, 0], np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = cyctc.ctc_loss(lab, x, ll, None)
        loss64 = cyctc.ctc_loss(lab, x.astype(np.float64), ll, None)
    assert loss.dtype == np.float32 and loss.flags.c_contiguous and loss.flags.writeable
    assert np.isfinite(loss64[:2]).all() and loss64[0] > 3.5e38
    with np.errstate(over="ignore"):
        assert np.array_equal(loss, loss64.astype(np.float32)) and np.isinf(loss[:2]).all()


def test_kernel_default_gradient_scale_is_one():
    rng = np.random.default_rng(4)
    B, T, C = 3, 7, 5
    x = rng.standard_normal((B, T, C))
    lab = np.array([[1, 2, 3], [4, 4, 0], [2, 0, 0]], np.int32)
    ll = np.array([3, 2, 1], np.int32)
    tl = np.array([7, 6, 2], np.int32)
    g1, g2 = np.empty_like(x), np.empty_like(x)
    l1 = _cpu.ctc_loss_grad(x, lab, ll, tl, 0, True, g1, np.ones(B), 1)
    l2 = _cpu.ctc_loss_grad(x, lab, ll, tl, 0, True, g2, None, 1)
    assert np.array_equal(l1, l2) and np.array_equal(g1, g2)


def test_small_thread_counts_follow_the_rule():
    omp = _cpu.openmp_enabled()
    for n in list(range(1, 20)) + [np.int64(3), np.int32(8)]:
        want = max(1, min(int(n), _threads.max_threads())) if omp else 1
        assert _threads.resolve_num_threads(n) == want
