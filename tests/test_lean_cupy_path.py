"""The lean path of the common CuPy call (``cyctc.loss._lean_cupy`` -> ``cyctc.cuda._backend.lean_loss``) against
the full path it shortcuts, on tests/fake_cupy.py.

The lean path may only answer calls the full path accepts, and must then launch the same kernels with the same
arguments (same scalars, same label / length / scale contents, the same logits) and give the same results; for
anything else it must decline (return None), so that every error still comes from the full path, word for word.
``full_only`` forces the full path; ``lean_taken`` records whether the lean path answered.
"""
import ctypes

import numpy as np
import pytest

import cyctc
from cyctc import _args, _cpu
from cyctc.cuda import _backend

import fake_cupy
from spies import acceptance_spy

B, T, C, L = 3, 12, 6, 4


@pytest.fixture
def fcp(monkeypatch):
    return fake_cupy.install(monkeypatch)


@pytest.fixture
def kernels(fcp, monkeypatch):
    """Recording no-op kernels: a list of (name, grid, block, shared, args) per launch."""
    calls = []

    class Kernel(fake_cupy.Kernel):
        def __call__(self, grid, block, args, shared_mem=0):
            calls.append((self.name, grid, block, shared_mem, args))

    made = {}
    monkeypatch.setattr(_backend, "get_function", lambda dev, src, name: made.setdefault(name, Kernel(name)))
    return calls


@pytest.fixture
def lean_taken(monkeypatch):
    """A list that gets, per CuPy ctc_loss call, whether the lean path took it."""
    return acceptance_spy(monkeypatch, _backend, "lean_loss")


def full_only(monkeypatch):
    monkeypatch.setattr(_backend, "lean_loss", lambda *args: None)


def _problem(dtype=np.float32, time_major=True, int_dtype=np.int32, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(T, B, C) if time_major else (B, T, C)).astype(dtype)
    labels = rng.integers(1, C, (B, L)).astype(int_dtype)
    ll = np.array([L, 2, 0], int_dtype)
    tl = np.array([T, T - 3, 5], int_dtype)
    return raw, labels, ll, tl


def _ptr(v):
    return int(v) if isinstance(v, np.uint64) else v.data.ptr


def _mem(ptr, dtype, n):
    """n elements of dtype at a (fake) device address: the memory itself, writable."""
    ct = np.ctypeslib.as_ctypes_type(np.dtype(dtype))
    return np.ctypeslib.as_array((ct * n).from_address(ptr))


def _arg_names(kernel_name, dtype, time_major, want_grad, Lmax=L):
    sx = (C, B * C) if time_major else (T * C, C)
    plan = _backend.launch_config(B, T, C, Lmax, dtype, sx, blank=0, merge_repeated=True,
                                  grad_strides=sx if want_grad else None)
    ln = next(ln for ln in plan.launches if ln.kernel == kernel_name)
    return [v if k in ("buf", "null") else k for k, v in ln.args], plan


def _launch_view(calls, dtype, time_major, want_grad):
    """The launches as comparable values: names, geometry, scalars; the caller's buffers by content (labels,
    lengths, scales) or address (logits, gradient); workspaces and the loss output left out (addresses differ)."""
    out = []
    for name, grid, block, shm, args in calls:
        names, plan = _arg_names(name, dtype, time_major, want_grad)
        ws = {n for n, _, _ in plan.workspaces}
        vals = []
        for n, v in zip(names, args):
            if n in ws or n == "loss":
                vals.append((n, type(v) is np.uint64 or isinstance(v, fake_cupy.ndarray)))
            elif n == "labels":
                vals.append((n, _mem(_ptr(v), np.int32, B * L).tolist()))
            elif n in ("label_length", "logit_length"):
                vals.append((n, _mem(_ptr(v), np.int32, B).tolist()))
            elif n == "grad_scale":
                vals.append((n, _mem(_ptr(v), np.float64, B).tolist()))
            elif n in ("x", "grad"):
                vals.append((n, _ptr(v)))
            else:
                vals.append((n, type(v).__name__, v.item() if hasattr(v, "item") else v))
        out.append((name, grid, block, shm, vals))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("time_major", [True, False])
@pytest.mark.parametrize("want_grad", [True, False])
@pytest.mark.parametrize("int_dtype", [np.int32, np.int64])
def test_lean_and_full_launch_the_same(kernels, lean_taken, monkeypatch, dtype, time_major, want_grad, int_dtype):
    raw, labels, ll, tl = _problem(dtype, time_major, int_dtype)
    x = fake_cupy.ndarray(raw)
    out = cyctc.ctc_loss(labels, x, ll, tl, time_major, blank_index=0, return_grad=want_grad)
    assert lean_taken == [True]
    lean = _launch_view(kernels, dtype, time_major, want_grad)
    kernels.clear()
    full_only(monkeypatch)
    ref = cyctc.ctc_loss(labels, x, ll, tl, time_major, blank_index=0, return_grad=want_grad)
    full = _launch_view(kernels, dtype, time_major, want_grad)
    # the gradient is a new array per call: compare where it is, not its address
    strip = lambda view: [(n, g, b, s, [v for v in vals if v[0] != "grad"]) for n, g, b, s, vals in view]  # noqa
    assert strip(lean) == strip(full)
    assert len(lean) == (3 if want_grad else 2)
    out, ref = (out, ref) if want_grad else ((out,), (ref,))
    for a, b in zip(out, ref):
        assert type(a) is fake_cupy.ndarray and a.dtype == b.dtype and a.shape == b.shape
        assert a._a.strides == b._a.strides


def test_common_call_takes_the_lean_path(kernels, lean_taken, monkeypatch):
    """The benchmark's call (bench_gpu.py's cyctc column) is answered by the lean path: the full normalisation is
    never run, one host-to-device copy, no sync, three launches."""
    raw, labels, ll, tl = _problem()
    x = fake_cupy.ndarray(raw)

    def no(*args, **kw):
        raise AssertionError("the full path ran")

    monkeypatch.setattr(_args, "normalize_loss_args", no)
    monkeypatch.setattr(_backend, "loss_and_grad", no)
    fake_cupy.reset()
    loss, grad = cyctc.ctc_loss(labels, x, ll, tl, blank_index=0, return_grad=True)
    assert lean_taken == [True]
    assert fake_cupy.COUNTS["h2d"] == 1 and fake_cupy.COUNTS["syncs"] == 0
    assert fake_cupy.COUNTS["ops"] <= 4  # the upload, the gradient, the workspace, the float32 loss
    assert len(kernels) == 3
    assert loss.dtype == np.float32 and loss.shape == (B,) and grad.shape == raw.shape
    cyctc.ctc_loss(labels, x, ll, None, blank_index=-C, return_grad=False)  # logit_length None, blank from the end
    assert lean_taken == [True, True]


class _Emulated:
    """Kernels emulated by the CPU core through the launch arguments alone (addresses and strides): the chain
    kernel writes the losses, the gradient kernel the gradient; what a real launch reads, nothing else."""

    def __init__(self, dtype, time_major, want_grad):
        self.dtype, self.time_major, self.want_grad = np.dtype(dtype), time_major, want_grad

    def __call__(self, name, args):
        names, _ = _arg_names(name, self.dtype, self.time_major, self.want_grad)
        a = dict(zip(names, args))
        if name.startswith("cyctc_rows"):
            return
        item = self.dtype.itemsize
        sxb, sxt = int(args[1]), int(args[2])
        span = (B - 1) * sxb + (T - 1) * sxt + C
        x = np.lib.stride_tricks.as_strided(_mem(_ptr(a["x"]), self.dtype, span), (B, T, C),
                                            (sxb * item, sxt * item, item))
        lab = _mem(_ptr(a["labels"]), np.int32, B * L).reshape(B, L).copy()
        ll = _mem(_ptr(a["label_length"]), np.int32, B).copy()
        tl = _mem(_ptr(a["logit_length"]), np.int32, B).copy()
        blank = int(args[7])
        loss = _mem(_ptr(a["loss"]), np.float64, B)
        if name.startswith("cyctc_chain"):
            loss[:] = _cpu.ctc_loss_grad(np.ascontiguousarray(x), lab, ll, tl, blank, True, None, None, 1, None, -1,
                                         1 << 30)
        else:
            sgb, sgt = int(args[-4]), int(args[-3])
            g = np.lib.stride_tricks.as_strided(_mem(_ptr(a["grad"]), self.dtype, (B - 1) * sgb + (T - 1) * sgt + C),
                                                (B, T, C), (sgb * item, sgt * item, item))
            scale = _mem(_ptr(a["grad_scale"]), np.float64, B).copy()
            tmp = np.empty((B, T, C), self.dtype)
            _cpu.ctc_loss_grad(np.ascontiguousarray(x), lab, ll, tl, blank, True, tmp, scale, 1, None, -1, 1 << 30)
            g[...] = tmp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("time_major", [True, False])
@pytest.mark.parametrize("want_grad", [True, False])
def test_lean_and_full_give_the_same_results_with_emulated_kernels(fcp, lean_taken, monkeypatch, dtype, time_major,
                                                                     want_grad):
    emu = _Emulated(dtype, time_major, want_grad)

    class Kernel(fake_cupy.Kernel):
        def __call__(self, grid, block, args, shared_mem=0):
            emu(self.name, args)

    made = {}
    monkeypatch.setattr(_backend, "get_function", lambda dev, src, name: made.setdefault(name, Kernel(name)))
    raw, labels, ll, tl = _problem(dtype, time_major)
    x = fake_cupy.ndarray(raw)
    out = cyctc.ctc_loss(labels, x, ll, tl, time_major, blank_index=0, return_grad=want_grad)
    assert lean_taken == [True]
    ref_cpu = cyctc.ctc_loss(labels, raw, ll, tl, time_major, blank_index=0, return_grad=want_grad)
    full_only(monkeypatch)
    ref = cyctc.ctc_loss(labels, x, ll, tl, time_major, blank_index=0, return_grad=want_grad)
    out, ref, ref_cpu = ((out, ref, ref_cpu) if want_grad else ((out,), (ref,), (ref_cpu,)))
    for a, b, c in zip(out, ref, ref_cpu):
        assert a.dtype == b.dtype == c.dtype and a.shape == b.shape == c.shape
        assert a._a.tobytes() == b._a.tobytes() == c.tobytes()


def _bad_calls():
    raw, labels, ll, tl = _problem()
    x = fake_cupy.ndarray(raw)
    ok = dict(labels=labels, logits=x, label_length=ll, logit_length=tl, blank_index=0, return_grad=True)
    bad_labels = labels.copy()
    bad_labels[0, 1] = C
    blank_labels = labels.copy()
    blank_labels[1, 0] = 0
    yield "label out of range", dict(ok, labels=bad_labels)
    yield "label is blank", dict(ok, labels=blank_labels)
    yield "negative label", dict(ok, labels=-labels)
    yield "label_length too long", dict(ok, label_length=np.array([L + 1, 1, 1], np.int32))
    yield "negative label_length", dict(ok, label_length=np.array([-1, 1, 1], np.int32))
    yield "logit_length too long", dict(ok, logit_length=np.array([T + 1, 1, 1], np.int32))
    yield "label_length wrong size", dict(ok, label_length=ll[:2])
    yield "labels wrong rows", dict(ok, labels=labels[:2])
    yield "labels 1-D", dict(ok, labels=labels[0])
    yield "float labels", dict(ok, labels=labels.astype(np.float64))
    yield "uint8 labels", dict(ok, labels=labels.astype(np.uint8))
    yield "list lengths", dict(ok, label_length=ll.tolist())
    yield "missing label_length", dict(ok, label_length=None)
    yield "blank out of range", dict(ok, blank_index=C)
    yield "blank a float", dict(ok, blank_index=0.0)
    yield "logits 2-D", dict(ok, logits=fake_cupy.ndarray(raw[0]))
    yield "logits int", dict(ok, logits=fake_cupy.ndarray(raw.astype(np.int32)))
    yield "logits empty classes", dict(ok, logits=fake_cupy.ndarray(raw[:, :, :0]))
    yield "reduction", dict(ok, reduction="avg")
    yield "return_grad", dict(ok, return_grad=2)
    yield "zero_infinity", dict(ok, zero_infinity="yes")
    yield "num_threads", dict(ok, num_threads=0)
    yield "memory_limit", dict(ok, memory_limit=-1)
    yield "time major flag", dict(ok, logits_time_major=3)
    yield "unique", dict(ok, unique=(1, 2))

    class NotAnArray:  # of CuPy's modules, but no ndarray
        __module__ = "cupyx.scipy.sparse"

    yield "logits of cupy's modules, not an array", dict(ok, logits=NotAnArray())


def _outcome(kw):
    try:
        r = cyctc.ctc_loss(**kw)
    except Exception as e:  # noqa: BLE001 - the exact exception is what is compared
        return "error", type(e), str(e)
    return ("ok",) + tuple((v.dtype.str, v.shape) for v in (r if isinstance(r, tuple) else (r,)))


@pytest.mark.parametrize("case", [c for c, _ in _bad_calls()])
def test_bad_calls_decline_and_raise_as_the_full_path(kernels, lean_taken, monkeypatch, case):
    kw = dict(_bad_calls())[case]
    got = _outcome(kw)
    assert True not in lean_taken  # declined (or never asked)
    assert got[0] == "error" or case in ("uint8 labels", "list lengths"), got  # those two: valid, just unusual
    full_only(monkeypatch)
    assert _outcome(kw) == got


def test_memory_limit_env_and_budget_plans_go_the_full_way(kernels, lean_taken, monkeypatch):
    raw, labels, ll, tl = _problem()
    x = fake_cupy.ndarray(raw)
    monkeypatch.setenv("CYCTC_MEMORY_LIMIT", "bogus")
    with pytest.raises(ValueError):
        cyctc.ctc_loss(labels, x, ll, tl, blank_index=0, return_grad=True)
    assert lean_taken == [] or lean_taken == [False]
    monkeypatch.delenv("CYCTC_MEMORY_LIMIT")
    lean_taken.clear()
    # a budget plan with a gradient (checkpoints) is the full path's: it may need a second pass
    cyctc.ctc_loss(labels, x, ll, tl, blank_index=0, return_grad=True, memory_limit=5000)
    assert lean_taken == [False]


def test_pack_is_the_same_for_every_label_layout():
    """pack_device_args's int32 row fast path and its general path (int64, strided) pack the same bytes, and
    refuse the same bad labels."""
    raw, labels, ll, tl = _problem()
    ref = _cpu.pack_device_args(labels, ll, tl, B, T, C, 0)
    assert ref is not None and ref[1] == L
    wide = np.zeros((B, 2 * L), np.int32)
    wide[:, ::2] = labels
    for lab in (np.asfortranarray(labels), labels.astype(np.int64), wide[:, ::2]):
        got = _cpu.pack_device_args(lab, ll.astype(np.int64), tl, B, T, C, 0)
        assert got[1] == L and got[0].tobytes() == ref[0].tobytes()
    for bad in (C, 0, -1):
        for lab in (labels.copy(), np.asfortranarray(labels), labels.astype(np.int64)):
            lab[0, 1] = bad
            assert _cpu.pack_device_args(lab, ll, tl, B, T, C, 0) is None
        lab = labels.copy()
        lab[2, 0] = bad  # beyond example 2's length (0): not read
        assert _cpu.pack_device_args(lab, ll, tl, B, T, C, 0) is not None
    buf = ref[0]
    assert np.array_equal(buf[:8 * B].view(np.float64), np.zeros(B))
    assert np.array_equal(buf[8 * B:16 * B].view(np.float64), np.ones(B))
    ints = buf[16 * B:].view(np.int32)
    assert np.array_equal(ints[:B * L], labels.ravel()) and np.array_equal(ints[B * L:B * L + B], ll)
    assert np.array_equal(ints[B * L + B:], tl)
    assert np.array_equal(_cpu.pack_device_args(labels, ll, None, B, T, C, 0)[0][16 * B:].view(np.int32)[-B:],
                          np.full(B, T))
