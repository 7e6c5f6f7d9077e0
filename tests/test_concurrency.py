"""Thread safety: many Python threads calling cyctc at once get exactly the results of sequential calls, and the
kernels release the GIL (other Python threads keep running during a long call)."""
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import log_softmax

import cyctc

N_THREADS = 8


def _problem(seed, B=5, T=60, C=12, L=12):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, C)).astype(np.float32 if seed % 2 else np.float64)
    if seed % 3 == 0:
        x *= 60  # peaked: some sequences take the log-space path
    labels = rng.integers(1, C - 1, size=(B, L)).astype(np.int32)
    ll = rng.integers(0, L + 1, size=B).astype(np.int32)
    tl = rng.integers(T // 2, T + 1, size=B).astype(np.int32)
    tl[0] = 1  # an infeasible example when ll[0] > 1
    return x, labels, ll, tl


def _jobs():
    """(name, zero-argument callable) pairs covering every public entry point that runs a kernel."""
    jobs = []
    for seed in range(6):
        x, lab, ll, tl = _problem(seed)
        xb = np.ascontiguousarray(x.swapaxes(0, 1))
        probs = np.exp(log_softmax(xb.astype(np.float64), axis=2)).astype(x.dtype)
        nt = (1, 2, None)[seed % 3]
        rows, cols = np.nonzero(np.arange(lab.shape[1]) < ll[:, None])
        csr = sp.csr_matrix((lab[rows, cols], (rows, cols)), shape=lab.shape)
        ok = np.maximum(tl, ll)  # v1 / Keras raise for labels longer than inputs
        jobs += [
            (f"loss+grad {seed}", lambda x=x, lab=lab, ll=ll, tl=tl, nt=nt: cyctc.ctc_loss(
                lab, x, ll, tl, blank_index=0, return_grad=True, num_threads=nt)),
            (f"loss sparse mean {seed}", lambda x=x, csr=csr, tl=tl, nt=nt: cyctc.ctc_loss(
                csr, x, None, tl, reduction="mean", return_grad=True, num_threads=nt)),
            (f"v1 {seed}", lambda x=x, lab=lab, ll=ll, ok=ok, nt=nt: cyctc.ctc_loss_v1(
                lab - 1 + (lab == 0), x, ok, ctc_merge_repeated=bool(nt == 2), label_length=ll, return_grad=True,
                num_threads=nt)),
            (f"keras {seed}", lambda probs=probs, lab=lab, ll=ll, ok=ok, nt=nt: cyctc.ctc_batch_cost(
                lab, probs, ok[:, None], ll[:, None], return_grad=True, num_threads=nt)),
            (f"greedy {seed}", lambda x=x, tl=tl, nt=nt: cyctc.ctc_greedy_decoder(x, tl, num_threads=nt)),
            (f"beam {seed}", lambda x=x, tl=tl, nt=nt: cyctc.ctc_beam_search_decoder(
                x, tl, beam_width=8, top_paths=3, num_threads=nt)),
            (f"keras decode {seed}", lambda probs=probs, tl=tl, nt=nt: cyctc.ctc_decode(
                probs, tl, greedy=False, beam_width=5, top_paths=2, num_threads=nt)),
            (f"align {seed}", lambda xb=xb, lab=lab, ll=ll, tl=tl, nt=nt: cyctc.ctc_align(
                xb, lab, tl, ll, normalize=True, num_threads=nt)),
        ]
    return jobs


def _flatten(result):
    """Every array in a result (tuples, named tuples, lists, SparseDecoded) as native bytes, in order."""
    if isinstance(result, np.ndarray) or np.isscalar(result):
        a = np.asarray(result)
        return [(a.dtype.str, a.shape, a.tobytes())]
    if hasattr(result, "indices") and hasattr(result, "values"):
        return _flatten(result.indices) + _flatten(result.values) + _flatten(result.dense_shape)
    out = []
    for r in result:
        out += _flatten(r)
    return out


def test_threads_get_exactly_the_sequential_results():
    jobs = _jobs()
    expected = {name: _flatten(fn()) for name, fn in jobs}
    barrier = threading.Barrier(N_THREADS)
    failures, done = [], []

    def worker(k):
        order = np.random.default_rng(k).permutation(len(jobs))
        barrier.wait()
        for rep in range(2):
            for i in order:
                name, fn = jobs[i]
                try:
                    if _flatten(fn()) != expected[name]:
                        failures.append(f"thread {k}: {name} differs")
                except Exception as e:  # pragma: no cover - reported below
                    failures.append(f"thread {k}: {name} raised {e!r}")
        done.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(done) == list(range(N_THREADS)), "a worker thread did not finish"
    assert not failures, failures[:10]


def _longest_stall(call):
    """(seconds the call took, longest stretch during it in which a pure-Python spinning thread made no step).

    A kernel that kept the GIL would stall the spinner for the whole call; one that releases it leaves only
    stalls of the order of the interpreter's switch interval (plus scheduling noise)."""
    stop = threading.Event()
    started = threading.Event()
    gaps = []  # (start, end) of every stretch > 2 ms without a step

    def spin():
        prev = time.perf_counter()
        started.set()
        while not stop.is_set():
            now = time.perf_counter()
            if now - prev > 0.002:
                gaps.append((prev, now))
            prev = now

    th = threading.Thread(target=spin)
    th.start()
    started.wait()
    time.sleep(0.02)
    t0 = time.perf_counter()
    call()
    t1 = time.perf_counter()
    stop.set()
    th.join()
    inside = [min(e, t1) - max(s, t0) for s, e in gaps if e > t0 and s < t1]
    return t1 - t0, max(inside, default=0.0)


def _long_calls():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3000, 30)).astype(np.float32)
    lab = rng.integers(1, 30, size=(1, 300)).astype(np.int32)
    xd = rng.standard_normal((3000, 1, 30)).astype(np.float32)
    xa = rng.standard_normal((1, 12000, 30)).astype(np.float32)
    laba = rng.integers(1, 30, size=(1, 1200)).astype(np.int32)
    return {
        "ctc_loss+grad": lambda: cyctc.ctc_loss(np.repeat(lab, 6, 0), np.repeat(x, 6, 0), [300] * 6, None, False,
                                                return_grad=True, num_threads=1),
        "ctc_loss": lambda: cyctc.ctc_loss(np.repeat(lab, 16, 0), np.repeat(x, 16, 0), [300] * 16, None, False,
                                           num_threads=1),
        "ctc_beam_search_decoder": lambda: cyctc.ctc_beam_search_decoder(xd, None, beam_width=64, num_threads=1),
        "ctc_align": lambda: cyctc.ctc_align(xa, laba, None, [1200], normalize=True, num_threads=1),
    }


@pytest.mark.parametrize("name", list(_long_calls()))
def test_kernels_release_the_gil(name):
    call = _long_calls()[name]
    call()  # warm up
    results = []
    for attempt in range(3):  # the machine may be busy: one clean attempt is enough
        took, stall = _longest_stall(call)
        results.append((round(took, 3), round(stall, 3)))
        if took > 0.05 and stall < 0.4 * took:
            return
    pytest.fail(f"{name}: a Python thread stalled for most of the call (took, longest stall): {results}")


def test_stall_detector_sees_a_call_that_keeps_the_gil():
    """The control: sorting a list is one C call that never lets go of the GIL."""
    data = np.random.default_rng(0).random(500_000).tolist()
    took, stall = max((_longest_stall(lambda: sorted(data)) for _ in range(2)), key=lambda r: r[1] / r[0])
    assert stall > 0.6 * took, (took, stall)
