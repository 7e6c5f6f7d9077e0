"""The CuPy code paths of the public API, on the CPU: host synchronisations, transfers, device placement, results.

``fake_cupy`` (numpy data pretending to live on a device) replaces ``cupy`` for these tests and counts every
operation after which real CuPy waits for the device (``.get()``, ``int()``/``bool()`` of an array, boolean-mask
indexing, ``nonzero``...). The rules of issue 10 checked here, for every public entry that runs on the device:

* no sync when labels and lengths are host (numpy) arrays;
* exactly one -- a single batched device-to-host copy of what validation reads -- when they are CuPy arrays;
* nothing added by ``ctc_loss_v1``, ``ctc_batch_cost`` or the greedy decoder.

Two levels: (1) the glue in ``cyctc.loss`` / ``_args`` / ``decode`` with the backend entries emulated on the CPU
(real numbers: the device path must give what the host path gives), and (2) the same calls through the real
``cyctc.cuda._backend`` entries with only the compiled kernels stubbed (their own glue must not sync either).
tests/test_gpu.py checks the same rules on a real device with ``cupyx.allow_synchronize(False)``.
"""

import numpy as np
import pytest

import cyctc
from cyctc import _args, _cpu, decode
from cyctc.cuda import _backend

import fake_cupy  # noqa: E402
from cuda_calls import B, C, L, T, problem as _problem, public_calls as _calls  # noqa: E402


@pytest.fixture
def fcp(monkeypatch):
    return fake_cupy.install(monkeypatch)


def _np(v):
    """numpy data of a fake device array, without counting a transfer (test bookkeeping only)."""
    return v._a if isinstance(v, fake_cupy.ndarray) else v


def _cpu_loss_and_grad(a, merge_repeated, want_grad, grad_scale, memory_limit=None):
    """The backend entry emulated with the CPU kernel (same contract as _backend.loss_and_grad; the CPU kernel gets
    the same memory_limit)."""
    x = _np(a.x)
    grad = grad_view = None
    if want_grad:
        grad = np.empty((a.T, a.B, a.C) if a.time_major else (a.B, a.T, a.C), dtype=x.dtype)
        grad_view = grad.swapaxes(0, 1) if a.time_major else grad
    scale = np.ones(a.B) if grad_scale is None else np.ascontiguousarray(_np(grad_scale))
    loss = _cpu.ctc_loss_grad(x, np.ascontiguousarray(_np(a.labels)), np.ascontiguousarray(_np(a.label_length)),
                              np.ascontiguousarray(_np(a.logit_length)), a.blank, merge_repeated, grad_view, scale,
                              1, None, -1, memory_limit or 0)
    dev = a.x.device.id
    return fake_cupy.ndarray(loss, dev), (fake_cupy.ndarray(grad, dev) if want_grad else None)


def _cpu_greedy(x, logit_length, blank, merge_repeated=True):
    out, n, neg = decode._greedy(np.ascontiguousarray(_np(x)), np.ascontiguousarray(_np(logit_length)), blank,
                                 merge_repeated, 1)
    dev = x.device.id
    return tuple(fake_cupy.ndarray(v, dev) for v in (out, n, neg))


@pytest.fixture(params=["emulated-backend", "real-backend-glue"])
def device(request, fcp, monkeypatch):
    """fake cupy installed; the backend either emulated on the CPU, or the real one with no-op kernels."""
    if request.param == "emulated-backend":
        monkeypatch.setattr(_backend, "loss_and_grad", _cpu_loss_and_grad)
        monkeypatch.setattr(_backend, "greedy_decode", _cpu_greedy)
    else:
        monkeypatch.setattr(_backend, "get_function", lambda dev, src, name: fake_cupy.Kernel(name))
    return request.param


from cuda_calls import CALL_NAMES, SYNC_CASES, SYNC_IDS, is_blank_last as _is_v1  # noqa: E402


def _run(name, small_on_device, blank_last):
    x, labels, ll, tl = _problem(blank=C - 1 if blank_last else 0)
    fn = dict(_calls(x, labels, ll, tl))[name]
    dev = fake_cupy.asarray
    small = dev if small_on_device else (lambda v: v)
    fake_cupy.reset()
    out = fn(small, dev)
    return out, dict(fake_cupy.COUNTS)


@pytest.mark.parametrize("name, small_on_device", SYNC_CASES, ids=SYNC_IDS)
def test_sync_count(device, name, small_on_device):
    """0 syncs with host labels/lengths, exactly 1 (the batched copy) with CuPy ones; at most 2 host-to-device
    copies of small arrays (labels + lengths in one, the mean's weights or the v1 keep-mask in another)."""
    out, counts = _run(name, small_on_device, _is_v1(name))
    assert counts["syncs"] == (1 if small_on_device else 0), counts
    assert _glue_h2d(name, small_on_device) <= 2


def _glue_h2d(name, small_on_device):
    """Host-to-device copies made by the call itself (the test's own uploads of its inputs not counted)."""
    x, labels, ll, tl = _problem(blank=C - 1 if _is_v1(name) else 0)
    fn = dict(_calls(x, labels, ll, tl))[name]
    pre = {}

    def dev(v):
        key = id(v)
        if key not in pre:
            pre[key] = fake_cupy.asarray(v)
        return pre[key]
    small = dev if small_on_device else (lambda v: v)
    fn(small, dev)  # warm: every input the test uploads is now cached in `pre`
    fake_cupy.reset()
    fn(small, dev)
    return fake_cupy.COUNTS["h2d"]


def _host(v):
    if isinstance(v, fake_cupy.ndarray):
        return v._a
    return np.asarray(v)


def _flatten(out):
    """(array, expected on the device) for every array of a public result (SparseDecoded: indices, values, and
    dense_shape, which is always a small host array, as TF's)."""
    if isinstance(out, decode.SparseDecoded):
        return [(out.indices, True), (out.values, True), (out.dense_shape, False)]
    if isinstance(out, (tuple, list)):
        return [a for v in out for a in _flatten(v)]
    return [(out, True)]


@pytest.mark.parametrize("name", CALL_NAMES)
@pytest.mark.parametrize("small_on_device", [False, True], ids=["host-lengths", "device-lengths"])
def test_device_path_matches_host_path(fcp, monkeypatch, name, small_on_device):
    """With the backend emulated by the CPU kernels, the device path's glue (reductions, masks, Keras rescaling,
    sparse results) gives exactly what the host path gives, and its arrays stay on the device."""
    monkeypatch.setattr(_backend, "loss_and_grad", _cpu_loss_and_grad)
    monkeypatch.setattr(_backend, "greedy_decode", _cpu_greedy)
    x, labels, ll, tl = _problem(blank=C - 1 if _is_v1(name) else 0)
    fn = dict(_calls(x, labels, ll, tl))[name]
    want = _flatten(fn(lambda v: v, lambda v: v))
    got = _flatten(fn(fake_cupy.asarray if small_on_device else (lambda v: v), fake_cupy.asarray))
    assert len(got) == len(want)
    for (g, on_device), (w, _) in zip(got, want):
        assert isinstance(g, fake_cupy.ndarray) == on_device, f"{name}: result on the wrong side"
        gh, w = _host(g), np.asarray(w)
        assert gh.dtype == w.dtype and gh.shape == w.shape
        np.testing.assert_array_equal(gh, w)


def test_greedy_result_builds_with_one_copy(fcp, monkeypatch):
    """The decoder call does not wait; asking for the sparse form copies the lengths once; lengths need none."""
    monkeypatch.setattr(_backend, "greedy_decode", _cpu_greedy)
    x, _, _, tl = _problem(blank=C - 1)
    res = cyctc.ctc_greedy_decoder(fake_cupy.asarray(x), tl)
    assert fake_cupy.COUNTS["syncs"] == 0
    sp = res.decoded[0]
    lengths = sp.lengths
    assert fake_cupy.COUNTS["syncs"] == 0 and isinstance(lengths, fake_cupy.ndarray)
    ref = cyctc.ctc_greedy_decoder(x, tl).decoded[0]
    np.testing.assert_array_equal(_host(lengths), ref.lengths)
    np.testing.assert_array_equal(_host(sp.indices), ref.indices)
    assert fake_cupy.COUNTS["syncs"] == 1
    np.testing.assert_array_equal(_host(sp.values), ref.values)
    np.testing.assert_array_equal(sp.dense_shape, ref.dense_shape)
    np.testing.assert_array_equal(_host(sp.to_dense()), ref.to_dense())
    assert [list(v) for v in sp.to_list()] == [list(v) for v in ref.to_list()]
    assert (sp.to_scipy() != ref.to_scipy()).nnz == 0


@pytest.mark.parametrize("which", ["labels", "label_length", "logit_length"])
def test_small_array_on_another_device_is_refused(device, which):
    x, labels, ll, tl = _problem()
    args = dict(labels=labels, label_length=ll, logit_length=tl)
    for k in args:
        args[k] = fake_cupy.asarray(args[k])
    with fake_cupy.Device(1):
        args[which] = fake_cupy.asarray(args[which]._a)
    with pytest.raises(ValueError, match=rf"{which} is on CUDA device 1 but the logits are on device 0"):
        cyctc.ctc_loss(args["labels"], fake_cupy.asarray(x), args["label_length"], args["logit_length"])


def test_results_stay_on_the_logits_device(device):
    x, labels, ll, tl = _problem()
    with fake_cupy.Device(1):
        xd = fake_cupy.asarray(x)
        loss, grad = cyctc.ctc_loss(labels, xd, ll, tl, return_grad=True)
        mean = cyctc.ctc_loss(labels, xd, ll, tl, reduction="mean")
    assert loss.device.id == grad.device.id == mean.device.id == 1


def test_bad_device_labels_named_after_one_copy(device):
    """Validation still names the argument and the entry after the batched copy."""
    x, labels, ll, tl = _problem()
    bad = labels.copy()
    bad[2, 0] = C + 3
    with pytest.raises(ValueError, match=r"labels\[2, 0\] = 10 is outside the classes \[0, 7\)"):
        cyctc.ctc_loss(fake_cupy.asarray(bad), fake_cupy.asarray(x), fake_cupy.asarray(ll), fake_cupy.asarray(tl))
    assert fake_cupy.COUNTS["syncs"] == 1
    with pytest.raises(ValueError, match=r"logit_length must be <= T = 24"):
        cyctc.ctc_loss(labels, fake_cupy.asarray(x), ll, fake_cupy.asarray(tl + T))


@pytest.mark.parametrize("dtypes", [("int64", "int32", "uint8"), ("int16", "bool", "float64"), ("int64",),
                                    ("int32", "int32")])
def test_fetch_small_is_one_exact_copy(fcp, dtypes):
    rng = np.random.default_rng(5)
    host = [rng.integers(-2**40, 2**40, (3, 4)).astype(dt) if dt != "bool" else rng.integers(0, 2, 7).astype(bool)
            for dt in dtypes]
    host.append(np.zeros((0,), np.int32))
    got = _args.fetch_small([fake_cupy.asarray(h) for h in host] + [None, [1, 2]], ["a"] * (len(host) + 2))
    assert fake_cupy.COUNTS["syncs"] == 1
    for g, h in zip(got, host):
        assert isinstance(g, np.ndarray) and g.dtype == h.dtype and g.shape == h.shape
        np.testing.assert_array_equal(g, h)
    assert got[-2] is None and got[-1] == [1, 2]


class _FakeCsr:
    """What cyctc reads of a cupyx.scipy.sparse.csr_matrix."""

    format = "csr"

    def __init__(self, m):
        self.shape = m.shape
        self.data, self.indices, self.indptr = (fake_cupy.asarray(v) for v in (m.data, m.indices, m.indptr))


_FakeCsr.__module__ = "cupyx.scipy.sparse._csr"


def test_device_sparse_labels_travel_in_the_same_copy(device):
    import scipy.sparse

    x, labels, ll, tl = _problem()
    rows = [labels[b, :ll[b]] for b in range(B)]
    sp = scipy.sparse.csr_matrix((np.concatenate(rows), np.concatenate([np.arange(n) for n in ll]),
                                  np.concatenate([[0], np.cumsum(ll)])), shape=(B, L))
    sp_dev = _FakeCsr(sp)
    fake_cupy.reset()
    loss = cyctc.ctc_loss(sp_dev, fake_cupy.asarray(x), None, fake_cupy.asarray(tl))
    assert fake_cupy.COUNTS["syncs"] == 1
    if device == "emulated-backend":
        np.testing.assert_array_equal(_host(loss), cyctc.ctc_loss(labels, x, ll, tl))
