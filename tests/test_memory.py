"""Memory: no growth over hundreds of calls of every entry point (C heap, Python-visible allocations and RSS),
requests too large for memory raise MemoryError (and leak nothing), and the sanitizer build really is one."""
import ctypes
import ctypes.util
import os
import tracemalloc

import numpy as np
import pytest
from scipy.special import log_softmax

import cyctc


def _asan_loaded():
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


ASAN = _asan_loaded()


def _mallinfo():
    """glibc's bytes in use on the C heap (all arenas, mmapped chunks included); None where unavailable."""
    if ASAN or not os.path.exists("/proc/self/maps"):
        return None  # ASan replaces malloc: mallinfo no longer describes the heap
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    fn.restype = MallInfo2
    return lambda: fn().uordblks + fn().hblkhd


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.environ.get("CYCTC_SANITIZE"), reason="only in the sanitizer run (tox -e asan)")
def test_sanitizer_runtime_is_loaded():
    """tox -e asan must test an instrumented build with the ASan runtime really in the process."""
    assert ASAN
    with open("/proc/self/maps") as f:
        maps = f.read()
    assert "libubsan" in maps or "libasan" in maps


def _workload():
    rng = np.random.default_rng(0)
    B, T, C, L = 4, 100, 20, 30
    x = rng.standard_normal((T, B, C)).astype(np.float32)
    lab = rng.integers(1, C - 1, (B, L)).astype(np.int32)
    ll = np.full(B, L, np.int32)
    tl = np.full(B, T, np.int32)
    probs = np.exp(log_softmax(x.swapaxes(0, 1), axis=2))
    peaked = x * 100  # the log-space path
    # a long, fairly confident sequence: products underflow, so the gradient call's tasks keep lost-mass rows of
    # their own until the meeting frees them
    flushing = (rng.standard_normal((400, 1, 5)) * 4).astype(np.float32)
    flab = rng.integers(1, 5, (1, 60)).astype(np.int32)

    def once(i):
        nt = 1 + i % 2  # one thread (cheap on a busy machine) and a team of two (per-thread scratch)
        cyctc.ctc_loss(lab, x, ll, tl, return_grad=True, num_threads=nt)
        cyctc.ctc_loss(lab, peaked, ll, tl, return_grad=True, reduction="mean", num_threads=nt)
        cyctc.ctc_loss(lab, peaked.astype(np.float64), ll, tl, num_threads=nt)
        cyctc.ctc_loss(flab, flushing, [60], [400], return_grad=True, num_threads=nt)
        cyctc.ctc_loss_v1(lab - 1, x, tl, label_length=ll, ctc_merge_repeated=False, return_grad=True,
                          num_threads=nt)
        cyctc.ctc_batch_cost(lab - 1, probs, tl, ll, return_grad=True, num_threads=nt)
        cyctc.ctc_greedy_decoder(x, tl, num_threads=nt)
        cyctc.ctc_beam_search_decoder(x, tl, beam_width=8, top_paths=2, num_threads=nt)
        cyctc.ctc_decode(probs, tl, greedy=False, beam_width=4, num_threads=nt)
        cyctc.ctc_align(x, lab, tl, ll, time_major=True, normalize=True, num_threads=nt)
        try:
            cyctc.ctc_loss(lab, x, ll + 1000, tl)
        except ValueError:
            pass

    return once


def test_no_memory_growth_over_many_calls():
    once = _workload()
    heap = _mallinfo()
    tracemalloc.start()
    try:
        for i in range(30):  # warm up: thread pools, arenas, caches
            once(i)
        h0, r0, t0 = heap() if heap else 0, _rss(), tracemalloc.get_traced_memory()[0]
        for i in range(200):
            once(i)
        h1, r1, t1 = heap() if heap else 0, _rss(), tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # 2000 calls: a leak of even one small buffer per call (>= ~50 bytes) would show on the C heap
    assert h1 - h0 < 100_000, f"C heap grew by {h1 - h0} bytes over 2000 calls"
    assert t1 - t0 < 64_000, f"traced allocations grew by {t1 - t0} bytes over 2000 calls"
    if not ASAN:  # ASan holds freed blocks in a quarantine (256 MiB by default): RSS says nothing there
        assert r1 - r0 < 16 * 2**20, f"RSS grew by {(r1 - r0) / 2**20:.1f} MiB over 2000 calls"


def _huge(shape, dtype=np.float32):
    """A read-only view of shape (B, T, C) repeating one row of C zeros: looks huge, occupies C floats."""
    row = np.zeros(shape[2], dtype)
    return np.lib.stride_tricks.as_strided(row, shape=shape, strides=(0, 0, row.itemsize), writeable=False)


def _nothing_too_large():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 2, 5))
    return cyctc.ctc_loss([[1, 2], [3, 0]], x, [2, 1], None, return_grad=True)


def test_too_large_requests_raise_memory_error_and_leak_nothing():
    ref = _nothing_too_large()
    T, L = 2**23, 2**22
    labels = np.ones((1, L), np.int32)
    labels[0, 1::2] = 2  # no repeats: feasible
    cases = [
        # the gradient work space: (T + 1) x (2L + 3) doubles, about 2**49 bytes (beyond any address space)
        lambda: cyctc.ctc_loss(labels, _huge((1, T, 3)), [L], None, False, return_grad=True),
        # the gradient itself: B * T * C = 2**50 floats
        lambda: cyctc.ctc_loss(np.ones((2**20, 1), np.int32), _huge((2**20, 2**20, 2**10)),
                               np.ones(2**20, np.int32), None, False, return_grad=True),
        # loss only: the frame normalisers (2 doubles each) of B * T = 2**40 frames
        lambda: cyctc.ctc_loss(np.ones((2**20, 1), np.int32), _huge((2**20, 2**20, 2**10)),
                               np.ones(2**20, np.int32), None, False),
        # Viterbi back-pointers: T x (2L + 1) bytes = 2**47
        lambda: cyctc.ctc_align(_huge((1, T, 3)), np.tile(labels, 2), None, None),
        # (B, top_paths, T) decoded paths
        lambda: cyctc.ctc_beam_search_decoder(_huge((2**20, 1, 3)), None, beam_width=2**29 - 1,
                                              top_paths=2**29 - 1),
    ]
    heap = _mallinfo()
    for i, case in enumerate(cases):
        with pytest.raises(MemoryError):
            case()
    before = heap() if heap else 0
    for _ in range(2):
        for case in cases:
            with pytest.raises(MemoryError):
                case()
    after = heap() if heap else 0
    assert after - before < 64_000, f"failed calls left {after - before} bytes behind"
    # and the library still works, with the same results
    for u, v in zip(_nothing_too_large(), ref):
        assert np.array_equal(u, v)
