"""The CUDA backend on a real device (marker ``gpu``; skipped when ``cupy.cuda.is_available()`` is False).

The same reference cases as tests/test_cuda_emulation.py, now through CuPy RawModules on the GPU, plus every public
entry on CuPy arrays (tests/cuda_calls.py: the list tests/test_cuda_glue.py checks on the CPU) against the CPU path,
bit-identical repeated calls, device placement, host synchronisations (none with host labels/lengths, exactly the
one batched copy with CuPy ones), streams and zero-copy interop with PyTorch (``__cuda_array_interface__``, DLPack).
"""

import os
import sys
import warnings

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_emu import cases  # noqa: E402
from cuda_calls import (CALL_NAMES, SYNC_CASES, SYNC_IDS, C, is_blank_last, keras_probs, problem,  # noqa: E402
                        public_calls)

from cyctc import _args, decode  # noqa: E402
from cyctc.cuda import _backend  # noqa: E402

cp = pytest.importorskip("cupy", reason="cupy is not installed")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cp.cuda.is_available(), reason="no CUDA device (cupy.cuda.is_available() is False)"),
]

LOSS_FILES = [p for p in cases.all_case_files() if cases.load_loss_case(p) is not None]


def _backend_run(case, grad=True):
    raw = cp.asarray(case.raw)
    x = raw.swapaxes(0, 1) if case.time_major else raw
    g_raw = cp.full(raw.shape, cp.nan, dtype=raw.dtype) if grad else None
    g = (g_raw.swapaxes(0, 1) if case.time_major else g_raw) if grad else None
    loss = _backend.ctc_loss_grad(x, cp.asarray(case.labels), cp.asarray(case.label_length),
                                  cp.asarray(case.logit_length), case.blank, case.merge_repeated, g, None)
    return loss, g


@pytest.mark.parametrize("path", LOSS_FILES, ids=os.path.basename)
def test_reference_cases_on_device(path):
    case = cases.load_loss_case(path)
    loss, g = _backend_run(case)
    assert isinstance(loss, cp.ndarray) and loss.dtype == cp.float64
    cases.check_loss_grad(case, cp.asnumpy(loss), cp.asnumpy(g))
    loss2, g2 = _backend_run(case)  # no atomics: identical bits on every call
    assert cp.asnumpy(loss2).tobytes() == cp.asnumpy(loss).tobytes()
    assert cp.asnumpy(g2).tobytes() == cp.asnumpy(g).tobytes()
    loss3, _ = _backend_run(case, grad=False)
    assert cp.asnumpy(loss3).tobytes() == cp.asnumpy(loss).tobytes()


@pytest.mark.parametrize("name", [c.name for c in cases.greedy_cases()])
def test_greedy_reference_on_device(name):
    case = next(c for c in cases.greedy_cases() if c.name == name)
    dec, n, neg = _backend.greedy_decode(cp.asarray(case.raw).swapaxes(0, 1), cp.asarray(case.logit_length),
                                         case.blank, case.merge_repeated)
    cases.check_greedy(case, cp.asnumpy(dec), cp.asnumpy(n), cp.asnumpy(neg))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("time_major", [False, True])
def test_public_api_on_cupy_matches_cpu(dtype, time_major):
    import cyctc

    rng = np.random.default_rng(3)
    B, T, C, Lmax = 8, 60, 20, 12
    raw, labels, ll, tl = cases.random_case(rng, B, T, C, Lmax, dtype=dtype, blank=0, time_major=time_major)
    kw = dict(logits_time_major=time_major, blank_index=0, return_grad=True)
    loss_c, grad_c = cyctc.ctc_loss(labels, raw, ll, tl, **kw)
    loss_g, grad_g = cyctc.ctc_loss(cp.asarray(labels), cp.asarray(raw), cp.asarray(ll), cp.asarray(tl), **kw)
    assert isinstance(loss_g, cp.ndarray) and isinstance(grad_g, cp.ndarray)
    assert grad_g.shape == raw.shape and grad_g.dtype == raw.dtype
    # float32 on the GPU: loss within 1e-6 relative and gradient within 1e-5 of exact (issue 10); the CPU adds its
    # own float32 rounding, hence 2e-5
    tol = 2e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(cp.asnumpy(loss_g), loss_c, rtol=tol)
    np.testing.assert_allclose(cp.asnumpy(grad_g), grad_c, rtol=0, atol=tol)


def _to_host(v):
    if isinstance(v, tuple):
        return tuple(_to_host(u) for u in v)
    return cp.asnumpy(v) if isinstance(v, cp.ndarray) else np.asarray(v)


@pytest.mark.parametrize("call", ["sum", "mean", "zero_infinity", "v1_ignore_longer_collapse", "v1_merge0",
                                  "batch_cost"])
def test_public_api_variants_on_cupy(call):
    """Every loss entry point on CuPy inputs gives what it gives on numpy inputs (and CuPy results back)."""
    import cyctc

    rng = np.random.default_rng(11)
    B, T, C, Lmax = 6, 30, 9, 8
    raw, labels, ll, tl = cases.random_case(rng, B, T, C, Lmax, dtype=np.float32, blank=C - 1)
    labels = np.where(labels == C - 1, 0, labels)
    probs = np.exp(raw - np.logaddexp.reduce(raw, axis=-1, keepdims=True)).astype(np.float32)

    def run(xp):
        a = (lambda v: cp.asarray(v)) if xp is cp else (lambda v: v)
        if call in ("sum", "mean"):
            return cyctc.ctc_loss(a(labels), a(raw), a(ll), a(tl), logits_time_major=False, blank_index=-1,
                                  reduction=call, return_grad=True)
        if call == "zero_infinity":
            return cyctc.ctc_loss(a(labels), a(raw), a(ll), a(tl), logits_time_major=False, blank_index=-1,
                                  zero_infinity=True, return_grad=True)
        if call == "v1_ignore_longer_collapse":
            return cyctc.ctc_loss_v1(a(labels), a(raw), a(tl), preprocess_collapse_repeated=True,
                                     ignore_longer_outputs_than_inputs=True, time_major=False, label_length=a(ll),
                                     return_grad=True)
        if call == "v1_merge0":
            return cyctc.ctc_loss_v1(a(labels), a(raw), a(tl), ctc_merge_repeated=False,
                                     ignore_longer_outputs_than_inputs=True, time_major=False, label_length=a(ll),
                                     return_grad=True)
        # Keras (TF1) refuses labels longer than their input: give those examples enough frames
        return cyctc.ctc_batch_cost(a(labels), a(probs), a(np.maximum(tl, ll)), a(ll), return_grad=True)

    want, got = run(np), run(cp)
    assert isinstance(got[1], cp.ndarray)
    for k, (w, g) in enumerate(zip(want, _to_host(got))):
        assert g.dtype == w.dtype and g.shape == w.shape
        if call == "batch_cost" and k == 1:  # compare d loss / d z = grad * (p + 1e-7): see _comparable
            shifted = probs + np.float32(1e-7)
            w, g = w * shifted, g * shifted
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)


def test_large_batch_long_labels_match_numpy_oracle():
    rng = np.random.default_rng(9)
    B, T, C, Lmax = 3, 1600, 8, 1500  # S = 3001 states: 6 tiles of 512 threads, rows in global memory
    labels = np.tile(np.arange(1, C, dtype=np.int32), Lmax // (C - 1) + 1)[:Lmax][None].repeat(B, 0)
    ll = np.array([Lmax, 1000, 7], np.int32)
    tl = np.array([T, 1200, 30], np.int32)
    raw = rng.standard_normal((B, T, C))
    g = cp.empty(raw.shape)
    loss = _backend.ctc_loss_grad(cp.asarray(raw), labels, ll, tl, 0, True, g, None)
    ref_loss, ref_grad = cases.numpy_ctc(raw, labels, ll, tl, 0, True)
    np.testing.assert_allclose(cp.asnumpy(loss), ref_loss, rtol=1e-10)
    np.testing.assert_allclose(cp.asnumpy(g), ref_grad, atol=1e-9)


@pytest.mark.parametrize("dtype, lengths", [("float32", (1422, 1423, 1429, 1430)), ("float64", (706, 707, 714, 715))])
def test_chain_shared_memory_at_the_boundary_lengths(dtype, lengths):
    """The compiled chain kernel's attributes agree with ptxas's report (_backend.STATIC_SHARED, the bound used
    without a device), and labels on both sides of the shared-memory limit launch and match the CPU (a launch
    asking for more than 48 KiB in all fails: float32 1423-1429 and float64 707-714 did with a 512 B table)."""
    import cyctc

    attrs = _backend.kernel_attributes(_backend.get_function(cp.cuda.Device().id, "ctc.cu",
                                                             f"cyctc_chain<{_backend.CTYPES[dtype]}>"))
    assert attrs["shared_size_bytes"] == _backend.STATIC_SHARED[dtype], attrs
    limit = _backend.chain_dynamic_shared_limit(cp.cuda.Device().id, dtype)
    assert limit == _backend.table_dynamic_shared_limit(dtype), (limit, attrs)
    rng = np.random.default_rng(11)
    for Lmax in lengths:
        T, C = Lmax + 8, 5
        labels = (np.arange(Lmax, dtype=np.int32) % 2 + 1)[None]  # 1 2 1 2 ...: no repeats, T >= Lmax suffices
        raw = rng.standard_normal((1, T, C)).astype(dtype)
        kw = dict(logits_time_major=False, blank_index=0, return_grad=True)
        loss_c, grad_c = cyctc.ctc_loss(labels, raw, [Lmax], [T], **kw)
        loss_g, grad_g = cyctc.ctc_loss(labels, cp.asarray(raw), [Lmax], [T], **kw)
        tol = 2e-5 if dtype == "float32" else 1e-10
        np.testing.assert_allclose(cp.asnumpy(loss_g), loss_c, rtol=tol, err_msg=f"Lmax {Lmax}")
        np.testing.assert_allclose(cp.asnumpy(grad_g), grad_c, rtol=0, atol=tol, err_msg=f"Lmax {Lmax}")


def test_runs_on_the_current_stream():
    case = cases.load_loss_case(LOSS_FILES[0])
    ref, _ = _backend_run(case)
    with cp.cuda.Stream(non_blocking=True) as s:
        loss, _ = _backend_run(case)
        s.synchronize()
    assert cp.asnumpy(loss).tobytes() == cp.asnumpy(ref).tobytes()


def test_torch_cuda_tensor_zero_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    case = cases.load_loss_case(LOSS_FILES[0])
    t = torch.as_tensor(case.raw, device="cuda")
    x = cp.asarray(t)  # __cuda_array_interface__ / DLPack: no copy
    assert x.data.ptr == t.data_ptr()
    g = cp.empty(x.shape, x.dtype)
    loss = _backend.ctc_loss_grad(x, case.labels, case.label_length, case.logit_length, case.blank, True, g, None)
    cases.check_loss_grad(case, cp.asnumpy(loss), cp.asnumpy(g))


def test_arrays_on_another_device_are_refused():
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two devices")
    case = cases.load_loss_case(LOSS_FILES[0])
    with cp.cuda.Device(0):
        x = cp.asarray(case.raw)
    with cp.cuda.Device(1):
        labels = cp.asarray(case.labels)
    with pytest.raises(ValueError, match="device"):
        _backend.ctc_loss_grad(x, labels, case.label_length, case.logit_length, case.blank, True, None, None)


# ---------------------------------------------------------------------------------------------------------------
# Every public entry (tests/cuda_calls.py) on the device

def _flatten(out):
    """(array, expected on the device) for every array of a public result; SparseDecoded as its indices, values
    (device) and dense_shape (a small host array, as TF's)."""
    if isinstance(out, decode.SparseDecoded):
        return [(out.indices, True), (out.values, True), (out.dense_shape, False)]
    if isinstance(out, (tuple, list)):
        return [a for v in out for a in _flatten(v)]
    return [(out, True)]


class _Uploads:
    """cp.asarray with a cache, so that a test can upload its inputs before the call it watches."""

    def __init__(self):
        self.done = {}

    def __call__(self, v):
        if id(v) not in self.done:
            self.done[id(v)] = (v, cp.asarray(v))
        return self.done[id(v)][1]


def _entry(name):
    x, labels, ll, tl = problem(blank=C - 1 if is_blank_last(name) else 0)
    return dict(public_calls(x, labels, ll, tl))[name]


def _comparable(name, a):
    """Keras's gradient is d loss / d p = g_z / (p + 1e-7): an absolute error of the logits' gradient g_z (within
    1e-5 of exact in float32 on the GPU) is amplified by 1 / (p + 1e-7), so the two are compared as g_z."""
    if name.startswith("ctc_batch_cost") and a.ndim == 3:
        x, _, _, _ = problem(blank=C - 1)
        p = keras_probs(x)
        return a * (p + np.float32(1e-7))
    return a


@pytest.mark.parametrize("name", CALL_NAMES)
@pytest.mark.parametrize("small_on_device", [False, True], ids=["host-lengths", "device-lengths"])
def test_public_entry_matches_cpu_bit_identical_on_repeat(name, small_on_device):
    fn = _entry(name)
    want = _flatten(fn(lambda v: v, lambda v: v))
    up = _Uploads()
    small = up if small_on_device else (lambda v: v)
    got = _flatten(fn(small, up))
    again = _flatten(fn(small, up))
    assert len(got) == len(want) == len(again)
    for (g, on_device), (g2, _), (w, _) in zip(got, again, want):
        assert isinstance(g, cp.ndarray) == on_device, f"{name}: result on the wrong side"
        if on_device:
            assert g.device.id == cp.cuda.Device().id
        gh, g2h, w = cp.asnumpy(g), cp.asnumpy(g2), np.asarray(w)
        assert gh.dtype == w.dtype and gh.shape == w.shape
        assert gh.tobytes() == g2h.tobytes(), f"{name}: repeated calls differ"
        if w.dtype.kind == "f":
            np.testing.assert_allclose(_comparable(name, gh), _comparable(name, w), rtol=2e-5, atol=2e-5)
        else:
            np.testing.assert_array_equal(gh, w)


def _quiet_no_sync():
    """cupyx.allow_synchronize(False) (deprecated in CuPy but present: it raises on ``.get()`` and device syncs)."""
    import contextlib

    import cupyx

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(cupyx.allow_synchronize(False))
    return stack


@pytest.mark.parametrize("name, small_on_device", SYNC_CASES, ids=SYNC_IDS)
def test_sync_rules(name, small_on_device, monkeypatch):
    """No sync with host labels/lengths; with CuPy ones exactly one, inside _args.fetch_small (the one batched
    device-to-host copy): everything else runs under cupyx.allow_synchronize(False)."""
    import cupyx

    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this CuPy has no cupyx.allow_synchronize (test_host_lengths_never_wait still runs)")
    fn = _entry(name)
    up = _Uploads()
    small = up if small_on_device else (lambda v: v)
    fn(small, up)  # compiles the kernels and uploads the inputs outside the watched call
    cp.cuda.Device().synchronize()
    copies = []
    real = _args.fetch_small

    def counted(values, names, like=None):
        if any(_args._is_device_array(v) or type(v).__module__.startswith("cupyx") for v in values):
            copies.append(names)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with cupyx.allow_synchronize(True):
                return real(values, names, like)
    monkeypatch.setattr(_args, "fetch_small", counted)
    with _quiet_no_sync():
        fn(small, up)
    assert len(copies) == (1 if small_on_device else 0), copies


_SPIN = r"""
extern "C" __global__ void cyctc_test_spin(long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < (unsigned long long)ns);
}
"""


@pytest.mark.parametrize("name", CALL_NAMES)
def test_host_lengths_never_wait_for_the_device(name):
    """The strongest form of "no sync": with a 0.5 s kernel queued first, the call returns while that kernel is
    still running (an event recorded after it is not done), whatever CuPy or the driver might do behind it."""
    fn = _entry(name)
    up = _Uploads()
    fn(lambda v: v, up)
    spin = cp.RawKernel(_SPIN, "cyctc_test_spin")
    cp.cuda.Device().synchronize()
    spin((1,), (1,), (np.int64(500_000_000),))
    after_spin = cp.cuda.Event()
    after_spin.record()
    fn(lambda v: v, up)
    still_running = not after_spin.done
    cp.cuda.Device().synchronize()
    assert still_running, f"{name} waited for the device"


def test_public_entries_on_a_second_device():
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two devices")
    for name in CALL_NAMES:
        fn = _entry(name)
        with cp.cuda.Device(0):
            ref = [cp.asnumpy(a) for a, _ in _flatten(fn(lambda v: v, cp.asarray))]
        with cp.cuda.Device(1):
            out = _flatten(fn(cp.asarray, cp.asarray))
        for (a, on_device), r in zip(out, ref):
            if on_device:
                assert a.device.id == 1, name
            assert cp.asnumpy(a).tobytes() == r.tobytes(), name


def test_public_api_refuses_small_arrays_on_another_device():
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two devices")
    import cyctc

    x, labels, ll, tl = problem()
    with cp.cuda.Device(1):
        ll1 = cp.asarray(ll)
    with pytest.raises(ValueError, match="label_length is on CUDA device 1 but the logits are on device 0"):
        cyctc.ctc_loss(labels, cp.asarray(x), ll1, tl)


def test_torch_dlpack_round_trip():
    """torch CUDA tensor -> cupy.from_dlpack (no copy) -> cyctc -> torch.from_dlpack (no copy), on torch's stream."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    import cyctc

    x, labels, ll, tl = problem()
    t = torch.as_tensor(x, device="cuda")
    xc = cp.from_dlpack(t)
    assert xc.data.ptr == t.data_ptr() and xc.dtype == cp.float32
    with cp.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
        loss, grad = cyctc.ctc_loss(labels, xc, ll, tl, return_grad=True)
    gt = torch.from_dlpack(grad)
    assert gt.data_ptr() == grad.data.ptr and gt.shape == t.shape and gt.dtype == torch.float32
    torch.cuda.synchronize()
    want_loss, want_grad = cyctc.ctc_loss(labels, x, ll, tl, return_grad=True)
    np.testing.assert_allclose(gt.cpu().numpy(), want_grad, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(cp.asnumpy(loss), want_loss, rtol=2e-5)
