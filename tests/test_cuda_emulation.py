"""The CUDA kernels, proven without a GPU.

1. Every packaged .cu file compiles under NVRTC (the compiler CuPy uses at run time, callable without a device) for
   compute_80 (PTX), sm_80 and sm_90 (cubin) with exactly the options the backend's RawModules get, warning-free;
   with nvcc on the PATH, ptxas reports no register spills for any kernel.
2. The same .cu source, built as host C++ through tests/cuda_emu/emu.h and driven by tests/cuda_emu/driver.cpp with
   the launch plans that cyctc.cuda._backend computes for the real CuPy launch, reproduces every reference case the
   GPU path supports, in FIBER_FWD, FIBER_RAND (3 seeds) and THREADS modes, bit-identically across modes; random
   inputs match an independent numpy oracle; labels longer than a block are processed in tiles, with the state rows
   in shared or in global memory; a ThreadSanitizer build in THREADS mode reports nothing; and the harness does
   catch a deleted __syncthreads().

Under CI (environment variable CI set) a missing tool (CuPy's NVRTC, g++) fails these tests instead of skipping.
"""

import ctypes
import os
import re
import shutil
import subprocess
import tempfile
import sys
import textwrap

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_cupy  # noqa: E402
from cuda_emu import cases, harness  # noqa: E402

from cyctc.cuda import _backend  # noqa: E402

pytestmark = pytest.mark.cuda_emulation

ARCHS = ("compute_80", "sm_80", "sm_90")
MODE_RUNS = (("FIBER_FWD", 0), ("FIBER_RAND", 1), ("FIBER_RAND", 2), ("FIBER_RAND", 3), ("THREADS", 0))
MODE_IDS = [f"{m}-{s}" if m == "FIBER_RAND" else m for m, s in MODE_RUNS]
TSAN_ENV = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1")


def _unavailable(reason):
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the CUDA emulation tests: {reason}")
    pytest.skip(reason)


def _nvrtc():
    try:
        return _backend.load_nvrtc()
    except Exception as e:  # cupy missing, or no libnvrtc
        _unavailable(f"NVRTC not available ({e}); pip install cupy-cuda13x 'nvidia-cuda-nvrtc==13.0.*'")


# ---------------------------------------------------------------------------------------------------------------
# 1. compilation

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(_backend.SOURCES))
def test_nvrtc_compiles_warning_free(source, arch):
    nvrtc = _nvrtc()
    names = _backend.name_expressions(source)
    prog = nvrtc.createProgram(_backend.kernel_source(source), source, (), ())
    try:
        for n in names:
            nvrtc.addNameExpression(prog, n)
        try:
            nvrtc.compileProgram(prog, _backend.nvrtc_options(arch))
        except nvrtc.NVRTCError as e:
            pytest.fail(f"{source} ({arch}): {e}\n{nvrtc.getProgramLog(prog)}")
        log = nvrtc.getProgramLog(prog)
        assert "warning" not in log.lower() and "error" not in log.lower(), log
        lowered = [nvrtc.getLoweredName(prog, n) for n in names]
        assert all(s.startswith("_Z") or s in names for s in lowered), lowered
        if arch.startswith("compute_"):
            ptx = nvrtc.getPTX(prog).decode()
            assert f".target sm_{arch[-2:]}" in ptx
            version = tuple(int(v) for v in re.search(r"\.version (\d+)\.(\d+)", ptx).groups())
            # PTX from NVRTC 13.0 is ISA 9.0; a newer NVRTC writes PTX that drivers of CUDA 13.0 reject
            assert version <= (9, 0), f"PTX ISA {version}: pin nvidia-cuda-nvrtc==13.0.*"
            for name in lowered:
                assert f".entry {name}(" in ptx
        else:
            assert nvrtc.getCUBIN(prog)[:4] == b"\x7fELF"
    finally:
        nvrtc.destroyProgram(prog)


@pytest.mark.parametrize("source", sorted(_backend.SOURCES))
def test_ptxas_reports_no_spills(source, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on the PATH (the check is optional: NVRTC is what users run)")
    names = _backend.name_expressions(source)
    wrapper = tmp_path / "instantiate.cu"  # nvcc sees no name_expressions: take each kernel's address instead
    wrapper.write_text(f'#include "{os.path.join(harness.CUDA_DIR, source)}"\n'
                       f"void* cyctc_instantiate[] = {{{', '.join(f'(void*)&{n}' for n in names)}}};\n")
    opts = [o for o in _backend.nvrtc_options("sm_90") if not o.startswith("-arch") and "execution-space" not in o]
    proc = subprocess.run([nvcc, "-cubin", "-arch=sm_90", "--resource-usage", *opts, str(wrapper),
                           "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "warning" not in out.lower(), out
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    assert len(spills) == len(names), out
    assert all(s == ("0", "0") for s in spills), out


# ---------------------------------------------------------------------------------------------------------------
# 2. emulation: builds (once per session, in parallel)

@pytest.fixture(scope="session")
def drivers(tmp_path_factory):
    if harness.compiler() is None:
        _unavailable("no C++ compiler (g++) for the emulation driver")
    d = str(tmp_path_factory.mktemp("cuda_emu"))
    harness.write_kernel_table(d)
    exes = {"plain": os.path.join(d, "driver"), "tsan": os.path.join(d, "driver_tsan")}
    procs = [subprocess.Popen(harness.build_command(d, exes["plain"], harness.BASE_FLAGS), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True),
             subprocess.Popen(harness.build_command(d, exes["tsan"], harness.TSAN_FLAGS), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"driver build failed:\n{out[-6000:]}"
    return exes


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Lazily written inputs per case, and the first result of each case (for the cross-mode comparison)."""
    return {"dir": str(tmp_path_factory.mktemp("cases")), "runs": {}, "first": {}}


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


LOSS_FILES = [p for p in cases.all_case_files() if cases.load_loss_case(p) is not None]
GREEDY_NAMES = [c.name for c in cases.greedy_cases()]


def test_reference_cases_are_found():
    assert len(LOSS_FILES) >= 35 and len(GREEDY_NAMES) >= 5, cases.data_dir()


# every case in every mode, except the long cases (T >= 200) with real threads: hundreds of OS threads passing 2T
# barriers take minutes on 2 cores, and THREADS mode is covered by every other case
REFERENCE_RUNS = [pytest.param(p, m, sd, id=f"{os.path.basename(p)}-{i}")
                  for p in LOSS_FILES for (m, sd), i in zip(MODE_RUNS, MODE_IDS)
                  if not (m == "THREADS" and cases.load_loss_case(p).x.shape[1] >= 200)]


@pytest.mark.parametrize("path,mode,seed", REFERENCE_RUNS)
def test_reference_loss_and_grad(path, mode, seed, drivers, runs):
    case = cases.load_loss_case(path)
    if case.name not in runs["runs"]:
        runs["runs"][case.name] = harness.loss_run(
            os.path.join(runs["dir"], case.name), case.raw, case.time_major, case.labels, case.label_length,
            case.logit_length, case.blank, case.merge_repeated)
    res = runs["runs"][case.name](drivers["plain"], mode, seed)
    grad = harness.grad_view(res, case.time_major)
    cases.check_loss_grad(case, res["loss"], grad)
    first = runs["first"].setdefault(case.name, res)
    assert _same_bits(res["loss"], first["loss"]) and _same_bits(res["grad"], first["grad"]), \
        "results depend on the thread schedule"


@pytest.mark.parametrize("mode,seed", MODE_RUNS, ids=MODE_IDS)
@pytest.mark.parametrize("name", GREEDY_NAMES)
def test_reference_greedy(name, mode, seed, drivers, runs):
    case = next(c for c in cases.greedy_cases() if c.name == name)
    key = "greedy_" + name
    if key not in runs["runs"]:
        runs["runs"][key] = harness.greedy_run(os.path.join(runs["dir"], key), case.raw, case.logit_length,
                                               case.blank, case.merge_repeated)
    res = runs["runs"][key](drivers["plain"], mode, seed)
    cases.check_greedy(case, res["decoded"], res["decoded_length"], res["neg_sum_logits"])


RANDOM_CONFIGS = [  # B, T, C, Lmax, dtype, blank, merge_repeated, time_major
    (5, 23, 7, 6, np.float64, 0, True, False),
    (4, 17, 9, 5, np.float64, 4, False, True),
    (3, 40, 33, 9, np.float32, 32, True, True),   # C > 32: several classes per lane / per thread
    (6, 12, 3, 4, np.float64, 1, False, False),   # tiny alphabet: many repeats
]


@pytest.mark.parametrize("mode,seed", [("FIBER_RAND", 7), ("THREADS", 0)], ids=["FIBER_RAND", "THREADS"])
@pytest.mark.parametrize("cfg", RANDOM_CONFIGS, ids=lambda c: f"B{c[0]}T{c[1]}C{c[2]}L{c[3]}-{np.dtype(c[4]).name}"
                         f"-blank{c[5]}-merge{int(c[6])}-tm{int(c[7])}")
def test_random_inputs_match_numpy_oracle(cfg, mode, seed, drivers, tmp_path):
    B, T, C, Lmax, dtype, blank, merge, tm = cfg
    rng = np.random.default_rng(B * 1000 + T)
    raw, labels, ll, tl = cases.random_case(rng, B, T, C, Lmax, dtype=dtype, blank=blank, merge_repeated=merge,
                                            time_major=tm)
    scale = rng.uniform(0.5, 2.0, B)
    run = harness.loss_run(str(tmp_path / "g"), raw, tm, labels, ll, tl, blank, merge, grad_scale=scale)
    res = run(drivers["plain"], mode, seed)
    x = raw.swapaxes(0, 1) if tm else raw
    ref_loss, ref_grad = cases.numpy_ctc(x, labels, ll, tl, blank, merge)
    np.testing.assert_array_equal(np.isposinf(res["loss"]), np.isposinf(ref_loss))
    fin = np.isfinite(ref_loss)
    rtol, atol = (1e-11, 1e-11) if dtype == np.float64 else (1e-5, 2e-6)
    np.testing.assert_allclose(res["loss"][fin], ref_loss[fin], rtol=rtol)
    g = harness.grad_view(res, tm).astype(np.float64)
    np.testing.assert_allclose(g, ref_grad * scale[:, None, None], rtol=0, atol=atol)
    # loss-only plan: no gradient launch, no posterior storage, the same loss bits
    res2 = harness.loss_run(str(tmp_path / "l"), raw, tm, labels, ll, tl, blank, merge, want_grad=False)(
        drivers["plain"], mode, seed)
    assert _same_bits(res2["loss"], res["loss"])


def _cpu_loss_grad(raw, time_major, labels, ll, tl, blank, merge, scale):
    """The CPU core (cyctc._cpu) on the same arguments: loss and gradient in the logits' layout."""
    from cyctc import _cpu

    x = raw.swapaxes(0, 1) if time_major else raw
    g = np.empty_like(raw)
    loss = _cpu.ctc_loss_grad(x, labels, ll, tl, blank, merge, g.swapaxes(0, 1) if time_major else g, scale, 1)
    return loss, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("merge", [True, False])
def test_matches_the_cpu_core_including_non_finite_logits(dtype, merge, drivers, tmp_path):
    """Same arguments through the CPU core and the emulated kernels: same inf / NaN pattern, same values to float
    rounding. -inf logits are classes of probability 0 (a label whose class is -inf everywhere makes the example
    infeasible: +inf, zero gradient); NaN or +inf in a valid frame makes the loss NaN and the gradient NaN on the
    valid frames; anything in padding frames changes nothing."""
    rng = np.random.default_rng(17 + merge)
    B, T, C, Lmax = 9, 14, 6, 4
    raw, labels, ll, tl = cases.random_case(rng, B, T, C, Lmax, dtype=dtype, blank=2, merge_repeated=merge,
                                            time_major=True)
    labels[:, :] = np.where(labels == 2, 1, labels)  # padding zeros aside, never the blank
    ll[:4], tl[:4] = 3, T
    raw[3, 0, 1] = np.nan          # (T, B, C): example 0, frame 3
    raw[5, 1, 4] = np.inf          # example 1
    raw[:, 2, labels[2, 1]] = -np.inf  # example 2: its second label never has any probability
    raw[7, 3, 0] = -np.inf         # example 3: one impossible class in one frame, still feasible
    tl[4] = 5
    raw[9, 4, :] = np.nan          # example 4: NaN only in padding frames
    scale = rng.uniform(0.5, 2, B)
    res = harness.loss_run(str(tmp_path), raw, True, labels, ll, tl, 2, merge, grad_scale=scale)(
        drivers["plain"], "FIBER_RAND", 2)
    ref_loss, ref_grad = _cpu_loss_grad(raw, True, labels, ll, tl, 2, merge, scale)
    assert np.isnan(res["loss"][:2]).all() and np.isposinf(res["loss"][2]) and np.isfinite(res["loss"][3:5]).all()
    np.testing.assert_array_equal(np.isnan(res["loss"]), np.isnan(ref_loss))
    np.testing.assert_array_equal(np.isposinf(res["loss"]), np.isposinf(ref_loss))
    ok = np.isfinite(ref_loss)
    rtol, atol = (1e-12, 1e-12) if dtype == np.float64 else (2e-6, 2e-6)
    np.testing.assert_allclose(res["loss"][ok], ref_loss[ok], rtol=rtol)
    np.testing.assert_array_equal(np.isnan(res["grad"]), np.isnan(ref_grad))
    np.testing.assert_array_equal(res["grad"] == 0, ref_grad == 0)
    np.testing.assert_allclose(np.nan_to_num(res["grad"]), np.nan_to_num(ref_grad), rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("Lmax", [20, 150])
def test_masked_classes_repeats_and_tight_lengths_match_the_cpu_core(Lmax, merge, dtype, drivers, tmp_path):
    """States of no probability (a NaN probability in the chains: classes at -inf, states past an example's end,
    states that can no longer reach it) against the CPU core: many classes masked to -inf in many frames (a
    vocabulary restriction), runs of repeated labels, merge_repeated both ways, and logit lengths from the fewest
    frames an alignment needs to a few more (states fall out of reach on most frames), in one-warp (Lmax 20) and
    multi-warp (Lmax 150: S = 301 states, more than 32 blocks of K) chains, forward and backward."""
    rng = np.random.default_rng(1000 + Lmax + 7 * merge + (dtype == np.float32))
    B, C = 6, 9
    labels = rng.integers(1, C, size=(B, Lmax)).astype(np.int32)
    labels[:, 1::4] = labels[:, 0::4][:, :labels[:, 1::4].shape[1]]  # runs of two equal labels
    ll = np.array([Lmax, Lmax, Lmax - 3, Lmax // 2, 1, Lmax], np.int32)
    for b in range(B):
        labels[b, ll[b]:] = 0
    need = np.array([ll[b] + (int(np.sum(labels[b, 1:ll[b]] == labels[b, :ll[b] - 1])) if merge else 0)
                     for b in range(B)])
    tl = (need + np.array([0, 1, 2, 5, 3, 40])).astype(np.int32)
    T = int(tl.max()) + 2
    raw = rng.standard_normal((B, T, C)) * 2.0
    for b in range(B):  # in each frame a random third of the classes absent from this example's labels: -inf
        absent = [c for c in range(1, C) if c not in set(labels[b, :ll[b]].tolist())]
        for t in range(T):
            if absent:
                raw[b, t, rng.choice(absent, size=max(1, len(absent) // 3), replace=False)] = -np.inf
    raw[1, :tl[1] // 2, labels[1, 0]] = -np.inf  # example 1's first label only in the second half
    raw = raw.astype(dtype)
    scale = rng.uniform(0.5, 2, B)
    res = harness.loss_run(str(tmp_path), raw, False, labels, ll, tl, 0, merge, grad_scale=scale)(
        drivers["plain"], "FIBER_RAND", 3)
    ref_loss, ref_grad = _cpu_loss_grad(raw, False, labels, ll, tl, 0, merge, scale)
    np.testing.assert_array_equal(np.isposinf(res["loss"]), np.isposinf(ref_loss))
    assert np.isfinite(ref_loss).sum() >= 4
    ok = np.isfinite(ref_loss)
    rtol, atol = (1e-12, 1e-12) if dtype == np.float64 else (2e-6, 2e-6)
    np.testing.assert_allclose(res["loss"][ok], ref_loss[ok], rtol=rtol)
    np.testing.assert_array_equal(res["grad"] == 0, ref_grad == 0)
    np.testing.assert_allclose(res["grad"], ref_grad, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probability_rows_hold_live_labels_between_nan_padding(dtype, drivers, tmp_path):
    """The row pass's probability rows (ctc.cu section 1), read back after a call: per valid frame t of example b,
    column 0 the blank's softmax; PROB_PAD columns of NaN; label k's softmax in column 1 + PAD + k exactly when some
    alignment can use it in frame t (L - T_b + t <= k <= t, k < L), NaN otherwise (a dead label, a label past L);
    PROB_PAD columns of NaN after Lmax labels. The chains load these columns with no test of their own (a label
    state past the example's end reads the padding), so every entry is checked; and the forward rows hold exactly 0
    for the states that can no longer reach the end (labels, and blanks whose whole block of K is dead)."""
    rng = np.random.default_rng(77 + (dtype == np.float32))
    B, C, Lmax = 5, 7, 9
    raw, labels, ll, tl = cases.random_case(rng, B, 14, C, Lmax, dtype=dtype, scale=2.0)
    ll[:] = [9, 4, 0, 9, 1]
    tl[:] = [14, 6, 3, 9, 14]  # example 3: T_b = L (every frame emits a label); 1 and 4: slack
    labels[:, :] = 0
    for b in range(B):  # no adjacent repeats: T_b = L is feasible
        for k in range(ll[b]):
            labels[b, k] = rng.choice([c for c in range(1, C) if k == 0 or c != labels[b, k - 1]])
    run = harness.loss_run(str(tmp_path), raw, False, labels, ll, tl, 0, True, extra_outputs=("prob", "arows"))
    res = run(drivers["plain"], "FIBER_FWD", 0)
    pad = _backend.PROB_PAD[_backend._dtype_name(dtype)]
    W = _backend.prob_width(Lmax, dtype)
    assert W == Lmax + 1 + 2 * pad and pad >= _backend.CHAIN_K[_backend._dtype_name(dtype)] // 2
    prob = res["prob"][:B * 14 * W].reshape(B, 14, W)
    x = raw.astype(np.float64)
    sm = np.exp(x - x.max(-1, keepdims=True))
    sm /= sm.sum(-1, keepdims=True)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    live_seen = dead_seen = 0
    for b in range(B):
        L, Tb = int(ll[b]), int(tl[b])
        for t in range(Tb):
            row = prob[b, t]
            np.testing.assert_allclose(row[0], sm[b, t, 0], rtol=rtol)
            assert np.isnan(row[1:1 + pad]).all() and np.isnan(row[1 + pad + Lmax:]).all(), (b, t)
            for k in range(Lmax):
                v = row[1 + pad + k]
                if k < L and L - Tb + t <= k <= t:
                    np.testing.assert_allclose(v, sm[b, t, labels[b, k]], rtol=rtol, err_msg=f"{b} {t} {k}")
                    live_seen += 1
                else:
                    assert np.isnan(v), (b, t, k, v)
                    dead_seen += k < L
    assert live_seen > 50 and dead_seen > 50
    # the forward rows (alpha, in state order after K - 1 leading values): a state that can no longer reach the end
    # (s < lo) is exactly 0 when it is a label state or its whole block of K is dead (a dead blank lives on only in
    # the block where lo lies)
    K = _backend.CHAIN_K[_backend._dtype_name(dtype)]
    S_row = 2 * Lmax + 1 + K - 1
    arows = res["arows"][K - 1:K - 1 + B * 14 * S_row].reshape(B, 14, S_row)
    zeros_seen = 0
    for b in range(B):
        S, Tb = 2 * int(ll[b]) + 1, int(tl[b])
        for t in range(Tb):
            lo = S - 2 - 2 * (Tb - 1 - t)
            for s_ in range(max(0, min(lo, S))):
                if s_ % 2 == 1 or (s_ // K) * K + K <= lo:
                    assert arows[b, t, s_] == 0, (b, t, s_, arows[b, t, s_])
                    zeros_seen += 1
    assert zeros_seen > 20
    ref_loss, _ = _cpu_loss_grad(raw, False, labels, ll, tl, 0, True, np.ones(B))
    np.testing.assert_allclose(res["loss"], ref_loss, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_labels_longer_than_a_block_are_tiled(drivers, tmp_path):
    """Lmax = 1100, float64: S = 2201 states, more than 512 blocks of K = 4: 384 threads over 2 tiles, whose values
    wait in the global workspace between frames; no label-length limit as in warp-ctc (639) or cuDNN."""
    rng = np.random.default_rng(5)
    B, T, C, Lmax = 2, 1150, 6, 1100
    labels = rng.integers(1, C, size=(B, Lmax)).astype(np.int32)
    for b in range(B):  # no adjacent repeats, so T frames suffice
        for i in range(1, Lmax):
            while labels[b, i] == labels[b, i - 1]:
                labels[b, i] = rng.integers(1, C)
    ll = np.array([Lmax, 333], np.int32)
    tl = np.array([T, 500], np.int32)
    labels[1, 333:] = 0
    raw = rng.standard_normal((B, T, C))
    S = 2 * Lmax + 1
    K, cpb, nthr, ntile = _backend.chain_geometry(S, raw.dtype)
    assert (K, cpb, nthr, ntile) == (4, 1, 384, 2)
    plan = _backend.launch_config(B, T, C, Lmax, raw.dtype, (T * C, C), blank=0, merge_repeated=True,
                                  grad_strides=(T * C, C))
    ab = next(ln for ln in plan.launches if "chain" in ln.kernel)
    assert ab.block[0] == 384 and ab.grid[0] == 2 * B and ab.shared_bytes == _backend.chain_shared_bytes(S, "float64")
    res = harness.loss_run(str(tmp_path / "r"), raw, False, labels, ll, tl, 0, True)(drivers["plain"], "FIBER_RAND", 11)
    ref_loss, ref_grad = cases.numpy_ctc(raw, labels, ll, tl, 0, True)
    np.testing.assert_allclose(res["loss"], ref_loss, rtol=1e-11)
    np.testing.assert_allclose(res["grad"], ref_grad, rtol=0, atol=1e-10)


def test_thread_sanitizer_reports_nothing(drivers, tmp_path):
    """THREADS mode under -fsanitize=thread: small cases covering both dtypes, merge_repeated=False, time-major
    strides, zero lengths, infeasible examples, the log-space fallback and the greedy decoder."""
    picks = [p for p in LOSS_FILES if os.path.basename(p)[:3] in ("003", "010", "031", "024")]
    assert len(picks) == 4  # 024: float32 peaked logits, every direction in the log-space fallback
    for path in picks:
        case = cases.load_loss_case(path)
        run = harness.loss_run(str(tmp_path / case.name), case.raw, case.time_major, case.labels, case.label_length,
                               case.logit_length, case.blank, case.merge_repeated)
        proc = run(drivers["tsan"], "THREADS", 0, env=TSAN_ENV, check=False)
        assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, proc.stderr[-6000:]
    g = cases.greedy_cases()[0]
    proc = harness.greedy_run(str(tmp_path / "greedy"), g.raw, g.logit_length, g.blank, g.merge_repeated)(
        drivers["tsan"], "THREADS", 0, env=TSAN_ENV, check=False)
    assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, proc.stderr[-6000:]


def test_emulation_catches_a_deleted_barrier(drivers, tmp_path):
    """The harness is not blind: the driver also holds a copy of ctc.cu without the __syncthreads() between frames
    of the forward recursion (harness.MUTANTS), which then reads rows that other threads have not written yet. The
    fibre schedules give wrong results and ThreadSanitizer names the race. (Labels of 70: S = 141 states in blocks
    of 4 (float64) on 64 threads, two warps per chain; within one warp the shuffles keep the lanes in step.)"""
    case = cases.load_loss_case(next(p for p in LOSS_FILES if os.path.basename(p).startswith("003")))
    rng = np.random.default_rng(4)
    raw, labels, ll, tl = _confident_case(rng, 2, 150, 7, 70, np.float64, peak=1.0)
    assert _backend.chain_geometry(141, "float64")[1:3] == (1, 64)
    ref_loss, ref_grad = cases.numpy_ctc(raw, labels, ll, tl, 0)
    case = cases.LossCase("mutant", raw, False, labels, ll, tl, 0, True, ref_loss, ref_grad, 1e-10, 1e-10)
    run = harness.loss_run(str(tmp_path), case.raw, case.time_major, case.labels, case.label_length,
                           case.logit_length, case.blank, case.merge_repeated, mutant="no_frame_barrier")
    for mode, seed in (("FIBER_FWD", 0), ("FIBER_RAND", 1)):
        res = run(drivers["plain"], mode, seed)
        with pytest.raises(AssertionError):
            cases.check_loss_grad(case, res["loss"], harness.grad_view(res, case.time_major))
    proc = run(drivers["tsan"], "THREADS", 0, env=TSAN_ENV, check=False)
    assert proc.returncode == 66 and "ThreadSanitizer: data race" in proc.stderr, proc.stderr[-3000:]
    assert "cyctc_chain" in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# 3. the pure-Python side of the glue

# the GPU benchmark shapes (benchmarks/bench_gpu.py): B, T, C, Lmax
BENCH_SHAPES = {"tiny": (1, 50, 20, 10), "ocr": (64, 32, 80, 10), "speech-char": (32, 400, 29, 60),
                "speech-bpe": (16, 200, 1000, 40), "large-vocab": (8, 150, 5000, 30), "long": (4, 1500, 29, 300),
                "one-long": (1, 3000, 29, 600), "many-short": (256, 100, 40, 20), "training": (64, 1000, 5000, 200)}
# edge shapes: one-warp chains and their limit (float32 S <= 128, float64 <= 64), multi-warp chains, tiles
EXTRA_SHAPES = [(1, 1, 2, 1), (4, 1500, 29, 300), (2, 10, 5, 3000), (2, 10, 5, 2000), (3, 10000, 29, 2000),
                (2, 10, 5, 1023), (2, 10, 5, 1024), (2, 10, 5, 511), (2, 10, 5, 512), (2, 10, 5, 63), (2, 10, 5, 64),
                (2, 10, 5, 31), (2, 10, 5, 32), (9, 10, 5, 20), (1, 20000, 32, 50000)]
LAUNCH_BOUNDS = {"cyctc_rows": "256", "cyctc_chain": "TILED ? 384 : 512, 1", "cyctc_grad": "256, 1"}


def _launch_bounds_in_source():
    src = _backend.kernel_source("ctc.cu")
    return dict((name, n) for n, name in re.findall(r"__launch_bounds__\((.*)\)\s*\n\s*(cyctc_\w+)\(", src))


def test_launch_plans_respect_cuda_limits():
    """Every plan (benchmark shapes and edge shapes, both dtypes, loss only and with gradient): at most 3 launches,
    blocks within the kernels' __launch_bounds__ (read from ctc.cu), shared memory within the 48 KiB a launch gets
    without the opt-in attribute, grid within CUDA's limits; chains of at most 32 K states one warp each, CHAINS_PER_BLOCK
    to a block, longer ones a block each, tiled beyond 512 K states; the critical path T + 3 barrier steps for
    multi-warp chains (the non-finite vote, one a frame, two for the end decision), none for one-warp chains."""
    assert _launch_bounds_in_source() == LAUNCH_BOUNDS
    for B, T, C, Lmax in list(BENCH_SHAPES.values()) + EXTRA_SHAPES:
        for dtype in ("float32", "float64"):
            for grad in (None, (T * C, C)):
                plan = _backend.launch_config(B, T, C, Lmax, dtype, (T * C, C), blank=0, merge_repeated=True,
                                              grad_strides=grad)
                ct, K = _backend.CTYPES[dtype], _backend.CHAIN_K[dtype]
                names = [ln.kernel for ln in plan.launches]
                S = 2 * Lmax + 1
                tiled = -(-S // K) > 512
                assert names == [f"cyctc_rows<{ct}>", f"cyctc_chain<{ct}, {K}, {'true' if tiled else 'false'}>"] + \
                    ([f"cyctc_grad<{ct}>"] if grad else [])
                for ln in plan.launches:
                    kname = ln.kernel.split("<")[0]
                    bound = (384 if "true" in ln.kernel else 512) if kname == "cyctc_chain" else 256
                    assert ln.block[0] % 32 == 0 and 32 <= ln.block[0] <= bound and ln.block[1:] == (1, 1)
                    assert ln.shared_bytes + _backend.STATIC_SHARED[dtype] <= _backend.SHARED_LIMIT
                    assert 1 <= ln.grid[0] < 2 ** 31 and 1 <= ln.grid[1] <= 65535 and ln.grid[2] == 1
                    assert all(k in ("buf", "i32", "i64", "f64", "null") for k, _ in ln.args)
                    assert all(-2 ** 31 <= v < 2 ** 31 for k, v in ln.args if k == "i32")
                rows, chain = plan.launches[0], plan.launches[1]
                assert rows.grid[0] * rows.block[0] // 32 >= B * T  # one warp per row
                S = 2 * Lmax + 1
                nchain = B * (2 if grad else 1)
                blocks = -(-S // K)
                if blocks <= 32:
                    cpb = _backend.CHAINS_PER_BLOCK
                    assert chain.block[0] == 32 * cpb and chain.grid[0] == -(-nchain // cpb)
                    assert chain.shared_bytes == 0
                else:
                    nthr = min(512, -(-blocks // 32) * 32) if blocks <= 512 else 384
                    assert chain.block[0] == nthr and chain.grid[0] == nchain
                    ntile = -(-blocks // nthr)
                    assert chain.shared_bytes == 2 * ntile * (nthr // 32) * (2 * _backend._isz(dtype) + 8)
                sizes = dict((n, c) for n, _, c in plan.workspaces)
                assert sizes["arows"] == sizes["brows"] == (K - 1 + B * T * (S + K - 1) if grad else 1)
                assert sizes["aexp"] == (B * T * blocks if grad else 1)
                assert sizes["work"] == nchain * _backend._chain_work(S, dtype)
                summary = _backend.launch_plan_summary(B, T, C, Lmax, dtype, with_grad=grad is not None)
                assert [d["kernel"] for d in summary] == names
                assert max(d["barrier_steps"] for d in summary) == (T + 3 if blocks > 32 else 0)
                assert [(d["grid"], d["block"], d["shared_bytes"]) for d in summary] == \
                    [(ln.grid, ln.block, ln.shared_bytes) for ln in plan.launches]
                if dtype == "float32":  # FP64 only for per-example / per-row scalars (loss, gradient scale)
                    assert sum(d["fp64_ops"] for d in summary) <= 3 * B * T + 12 * B
    empty = _backend.launch_config(0, 5, 3, 1, "float64", (15, 3), blank=0, merge_repeated=True)
    assert empty.launches == ()
    no_frames = _backend.launch_config(3, 0, 3, 1, "float64", (0, 3), blank=0, merge_repeated=True,
                                       grad_strides=(0, 3))
    assert [ln.kernel for ln in no_frames.launches] == ["cyctc_chain<double, 4, false>"]
    with pytest.raises(TypeError, match="float32 or float64"):
        _backend.launch_config(1, 1, 2, 1, "float16", (2, 2), blank=0, merge_repeated=True)
    # the hour's labels (50000) fit the boundary slots of both; 70000 not float64's
    for dtype in ("float32", "float64"):
        _backend.launch_config(1, 10, 5, 50000, dtype, (50, 5), blank=0, merge_repeated=True, grad_strides=(50, 5))
    for dtype, Lmax in (("float64", 70000), ("float32", 2_000_000)):
        with pytest.raises(ValueError, match="too long for the CUDA backend's shared memory"):
            _backend.launch_config(1, 10, 5, Lmax, dtype, (50, 5), blank=0, merge_repeated=True)


class _FakeDevice:
    def __init__(self, i=0):
        self.id = i

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _FakeArray(np.ndarray):
    """Stands in for cupy.ndarray in the glue test: host memory, a device attribute, cupy's module name."""

    device = _FakeDevice(0)

    @property
    def data(self):  # cupy.ndarray.data.ptr: the device address (here the host one)
        import types

        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])


_FakeArray.__module__ = "cupy._stand_in"


def _fake_cupy():
    import types

    def wrap(a):
        return np.asarray(a).view(_FakeArray)

    cp = types.SimpleNamespace(
        int32=np.int32, int64=np.int64, float64=np.float64, ndarray=_FakeArray,
        asarray=lambda a, dtype=None: wrap(np.array(a, dtype=dtype)),
        ascontiguousarray=lambda a, dtype=None: wrap(np.ascontiguousarray(a, dtype=dtype)),
        empty=lambda shape, dtype=np.float64: wrap(np.full(shape, np.nan if np.dtype(dtype).kind == "f" else
                                                           np.iinfo(dtype).max if np.dtype(dtype).kind == "u" else -1,
                                                           dtype=dtype)),
        ones=lambda shape, dtype=np.float64: wrap(np.ones(shape, dtype=dtype)),
        cuda=types.SimpleNamespace(Device=_FakeDevice, driver=fake_cupy.driver))
    return cp, wrap


def test_cupy_glue_passes_what_the_plan_says(monkeypatch):
    """_backend.loss_and_grad with a stand-in for CuPy: every launch gets its plan's grid / block / shared memory,
    scalars of the exact C types (np.int32 for int, np.int64 for long long, np.float64 for double), the caller's
    logits view itself (time-major: the strided view, not a copy), a gradient in the logits' layout, and each
    workspace as a device address (np.uint64) inside the call's one allocation, aligned, none overlapping."""
    cp, wrap = _fake_cupy()
    calls = []

    class Kernel(fake_cupy.Kernel):
        def __call__(self, grid, block, args, shared_mem=0):
            calls.append((self.name, grid, block, shared_mem, args))

    monkeypatch.setattr(_backend, "_cupy", lambda: cp)
    monkeypatch.setattr(_backend, "get_function", lambda dev, src, name: Kernel(name))
    case = cases.load_loss_case(next(p for p in LOSS_FILES if "timemajor" in p))
    raw = wrap(case.raw)

    class A:  # what cyctc._args hands the backends: host labels / lengths, a device view of the logits
        x, labels, label_length, logit_length = raw.swapaxes(0, 1), case.labels, case.label_length, case.logit_length
        blank, time_major = case.blank, True
        B, T, C = raw.shape[1], raw.shape[0], raw.shape[2]

    loss, grad = _backend.loss_and_grad(A, True, True, np.full(A.B, 0.5))
    assert isinstance(loss, _FakeArray) and loss.shape == (A.B,) and loss.dtype == np.float64
    assert isinstance(grad, _FakeArray) and grad.shape == raw.shape and grad.dtype == raw.dtype
    assert grad.flags.c_contiguous  # time-major like the logits
    item = raw.itemsize
    plan = _backend.launch_config(A.B, A.T, A.C, case.labels.shape[1], raw.dtype, (A.C, A.B * A.C), blank=A.blank,
                                  merge_repeated=True, grad_strides=(A.C, A.B * A.C))
    assert [c[0] for c in calls] == [ln.kernel for ln in plan.launches]
    kinds = {"i32": np.int32, "i64": np.int64, "f64": np.float64}
    sizes = {n: c * np.dtype(d).itemsize for n, d, c in plan.workspaces}
    addr = {}
    for (name, grid, block, shm, args), ln in zip(calls, plan.launches):
        assert (grid, block, shm) == (ln.grid, ln.block, ln.shared_bytes)
        assert len(args) == len(ln.args)
        for got, (kind, value) in zip(args, ln.args):
            if kind == "buf" and value in sizes:  # a workspace: its address, the same in every launch
                assert type(got) is np.uint64, (name, value)
                assert addr.setdefault(value, int(got)) == int(got), (name, value)
            elif kind == "buf":
                assert isinstance(got, _FakeArray), (name, value)
                if value == "x":
                    assert got is A.x and got.strides == (A.C * item, A.B * A.C * item, item)
                if value == "grad":
                    assert np.shares_memory(got, grad) and got.shape == A.x.shape
                if value == "grad_scale":
                    assert np.array_equal(got, np.full(A.B, 0.5))
                if value in ("labels", "label_length", "logit_length"):
                    assert got.dtype == np.int32 and got.flags.c_contiguous
            elif kind == "null":
                assert type(got) is np.uint64 and got == 0
            else:
                assert type(got) is kinds[kind] and got == value, (name, kind, value, got)
    spans = sorted((a, a + sizes[n]) for n, a in addr.items())
    assert all((a - spans[0][0]) % 256 == 0 for a, _ in spans)  # aligned as the slab's start (CuPy's: 512 bytes)
    assert set(addr) == set(sizes) and all(e <= b for (_, e), (b, _) in zip(spans, spans[1:]))  # disjoint
    calls.clear()
    loss, grad = _backend.loss_and_grad(A, False, False, None)
    assert grad is None and [c[0] for c in calls] == ["cyctc_rows<float>", "cyctc_chain<float, 8, false>"]
    other = wrap(case.labels)
    other.device = _FakeDevice(1)
    with pytest.raises(ValueError, match="device 1"):
        _backend.ctc_loss_grad(A.x, other, case.label_length, case.logit_length, A.blank, True, None, None)


def test_backend_import_needs_no_cupy():
    code = textwrap.dedent("""
        import sys
        sys.modules['cupy'] = None  # make `import cupy` fail
        import cyctc.cuda._backend as b
        b.launch_config(2, 3, 4, 1, 'float32', (12, 4), blank=0, merge_repeated=True)
        assert not b.available()
        assert 'cupy' in b.reason(), b.reason()
    """)
    site = os.path.dirname(os.path.dirname(harness.CUDA_DIR))  # where this cyctc was imported from
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())  # not the source tree: import the cyctc under test
    assert proc.returncode == 0, proc.stderr


def test_reason_is_a_sentence():
    r = _backend.reason()
    assert r == "ok" or "cupy" in r or "device" in r
    assert _backend.available() == (r == "ok")


# ---------------------------------------------------------------------------------------------------------------
# 4. second-generation properties: FP32 hot path, critical path, flush accounting, magnitudes, long inputs

_F64_OP = re.compile(r"^\s*(?:@%p\d+\s+)?(?!ld|st|mov|cvta)([a-z0-9]+)(?:\.[a-z0-9]+)*\.f64\b")


def test_float32_kernels_have_few_fp64_instructions():
    """The PTX of each float32 loss/gradient kernel (only their instantiations compiled) holds at most 24 FP64
    arithmetic instructions (any instruction on .f64 but loads, stores and moves, conversions included): FP64 is
    left for per-example scalars (first generation: 661 in all)."""
    nvrtc = _nvrtc()
    names = [n for n in _backend.name_expressions("ctc.cu", "float32")]
    prog = nvrtc.createProgram(_backend.kernel_source("ctc.cu"), "ctc.cu", (), ())
    try:
        for n in names:
            nvrtc.addNameExpression(prog, n)
        nvrtc.compileProgram(prog, _backend.nvrtc_options("compute_80"))
        ptx = nvrtc.getPTX(prog).decode()
    finally:
        nvrtc.destroyProgram(prog)
    assert ".entry" in ptx and "f32" in ptx
    entries = ptx.split(".entry")[1:]
    assert len(entries) == len(names)
    for entry in entries:
        f64 = [ln.strip() for ln in entry.splitlines() if _F64_OP.match(ln)]
        assert len(f64) <= 24, f"{entry.split('(')[0]}: {len(f64)} FP64 instructions:\n" + "\n".join(f64)


def _confident_case(rng, B, T, C, Lmax, dtype, peak=4.0):
    """Logits of a fairly confident model: a random alignment of each example's labels gets +peak."""
    raw = rng.standard_normal((B, T, C)).astype(np.float64)
    labels = np.zeros((B, Lmax), np.int32)
    ll = np.full(B, Lmax, np.int32)
    tl = np.full(B, T, np.int32)
    for b in range(B):
        lab = rng.integers(1, C, size=Lmax)
        for i in range(1, Lmax):
            while lab[i] == lab[i - 1]:
                lab[i] = rng.integers(1, C)
        labels[b] = lab
        cuts = np.sort(rng.choice(np.arange(1, T), size=Lmax, replace=False))
        for k, (a, e) in enumerate(zip(cuts, list(cuts[1:]) + [T])):
            raw[b, a:a + max(1, (e - a) // 2), lab[k]] += peak
        raw[b, :, 0] += peak / 2
    return raw.astype(dtype), labels, ll, tl


@pytest.mark.parametrize("shape", ["tiny", "ocr", "many-short"])
def test_emulated_barrier_steps_match_the_plan(shape, drivers, tmp_path):
    """The emulation counts the __syncthreads every block passes: the chain's longest block passes exactly the
    plan's barrier_steps (T + 3 for a chain of several warps, none for one-warp chains; forward and backward chains
    run concurrently), the row kernels none; and the results match the float64 oracle. (Big shapes: see
    test_launch_plans_respect_cuda_limits.)"""
    B, T, C, Lmax = BENCH_SHAPES[shape]
    B = min(B, 8)  # the same per-block critical path, fewer blocks to emulate
    rng = np.random.default_rng(3)
    raw, labels, ll, tl = _confident_case(rng, B, T, C, Lmax, np.float32)
    res = harness.loss_run(str(tmp_path), raw, False, labels, ll, tl, 0, True)(drivers["plain"], "FIBER_RAND", 5)
    summary = {d["kernel"]: d["barrier_steps"] for d in _backend.launch_plan_summary(B, T, C, Lmax, "float32")}
    assert res["_barriers"] == summary
    one_warp = _backend.chain_geometry(2 * Lmax + 1, "float32")[1] > 1
    assert summary["cyctc_chain<float, 8, false>"] == (0 if one_warp else T + 3)
    ref_loss, ref_grad = cases.numpy_ctc(raw, labels, ll, tl, 0)
    cases.assert_loss_close(res["loss"], ref_loss, 1e-6)
    np.testing.assert_allclose(res["grad"], ref_grad, rtol=0, atol=1e-5)


# Issue 13, item 0: states lost to underflow although each factor passed a floor check (exact values by brute force)
FLUSH_REPRODUCERS = [
    ("tf_ctc_loss_T11", np.array(
        [[187.292, -308.093, 133.245, -248.7], [-121.211, 192.276, -13.805, -113.947],
         [-69.146, -320.739, 238.4, 428.951], [191.474, -101.569, 14.989, 152.551],
         [273.506, 109.306, -197.408, -131.477], [-422.437, -193.609, -259.169, 127.967],
         [-276.368, 242.886, -8.738, -73.873], [16.32, -30.761, -477.759, 170.307],
         [-99.03, 103.508, 427.885, -202.38], [358.645, -132.95, 87.087, -280.634],
         [-129.116, -57.678, 26.461, 85.819]]), [3], 0, 1808.73730),
    ("keras_confident_wrong", np.log(np.eye(3)[[0] * 50 + [1] * 60 + [0] * 60] + 1e-7), [1, 0], 2, 801.9730),
    ("tied_masses", np.array([[0, 600], [300, -300], [-300, 0], [300, 0], [0, 600]], np.float64), [1], 0, 898.6137),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", FLUSH_REPRODUCERS, ids=[c[0] for c in FLUSH_REPRODUCERS])
def test_flushes_are_accounted_for(case, dtype, drivers, tmp_path):
    """Loss-only and gradient calls both give the exact loss (and gradient) where a scaled recursion without
    rigorous flush accounting silently loses the dominant path."""
    name, x, lab, blank, exact = case
    raw = x.astype(dtype)[None]
    labels = np.array([lab], np.int32)
    ll, tl = np.array([len(lab)], np.int32), np.array([x.shape[0]], np.int32)
    ref_loss, ref_grad = cases.numpy_ctc(raw, labels, ll, tl, blank)
    if dtype == np.float64:
        np.testing.assert_allclose(ref_loss, [exact], rtol=1e-7)  # the oracle agrees with the brute force
    rtol, atol = (1e-12, 1e-10) if dtype == np.float64 else (1e-6, 1e-5)
    for want_grad in (False, True):
        res = harness.loss_run(str(tmp_path / str(want_grad)), raw, False, labels, ll, tl, blank, True,
                               want_grad=want_grad)(drivers["plain"], "FIBER_RAND", 3)
        cases.assert_loss_close(res["loss"], ref_loss, rtol)
        if want_grad:
            np.testing.assert_allclose(res["grad"], ref_grad, rtol=0, atol=atol)
        # these inputs leave the scaled range: the critical path is the plan's plus the fallback's, at most
        chain = next(d for d in _backend.launch_plan_summary(1, x.shape[0], x.shape[1], len(lab), dtype,
                                                             with_grad=want_grad) if "chain" in d["kernel"])
        assert res["_barriers"][chain["kernel"]] <= chain["barrier_steps"] + chain["fallback"]["barrier_steps"]
    if name == "tied_masses":
        np.testing.assert_allclose(res["grad"][0, :, 0], [-.5, .25, -.5, .5, -.25], atol=max(atol, 1e-9))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_extreme_magnitudes(dtype, drivers, tmp_path):
    """Issue 13 items 1-2: logits all equal to 1e30 give the uniform-softmax loss; logits shifted by 1e8 (float64)
    keep full accuracy; classes at -1e10, -1e30 or -inf give each frame a gradient that sums to 0 and matches."""
    T, C = 6, 4
    base = np.random.default_rng(8).standard_normal((4, T, C))
    raw = np.empty((4, T, C))
    raw[0] = 1e30
    raw[1] = base[1] + (1e8 if dtype == np.float64 else 1e3)
    raw[2] = base[2]
    raw[2][:, 2] = -1e30
    raw[3] = base[3]
    raw[3][:, 3] = -np.inf
    raw[3][2, 2] = -1e10
    raw = raw.astype(dtype)
    labels = np.array([[1, 2], [1, 2], [1, 1], [1, 2]], np.int32)
    labels[2] = [1, 0]
    ll = np.array([2, 2, 1, 2], np.int32)
    tl = np.full(4, T, np.int32)
    exact_x = raw.astype(np.float64)
    exact_x = exact_x - np.where(np.isfinite(exact_x), exact_x, -np.inf).max(axis=-1, keepdims=True)  # exact shifts
    ref_loss, ref_grad = cases.numpy_ctc(exact_x, labels, ll, tl, 0)
    uniform, _ = cases.numpy_ctc(np.zeros((1, T, C)), labels[:1], ll[:1], tl[:1], 0)
    np.testing.assert_allclose(ref_loss[0], uniform[0], rtol=1e-15)
    res = harness.loss_run(str(tmp_path), raw, False, labels, ll, tl, 0, True)(drivers["plain"], "FIBER_FWD", 0)
    rtol, atol = (1e-13, 1e-13) if dtype == np.float64 else (1e-6, 1e-5)
    cases.assert_loss_close(res["loss"], ref_loss, rtol)
    np.testing.assert_allclose(res["grad"], ref_grad, rtol=0, atol=atol)
    np.testing.assert_allclose(res["grad"].astype(np.float64).sum(-1), 0, atol=atol)


@pytest.mark.parametrize("kind", ["confident", "random"])
def test_long_inputs_float32(kind, drivers, tmp_path):
    """T = 10000, L = 2000 (S = 4001 states: 501 blocks of 8 on 512 threads) and T = 3000, float32
    through the emulation with flush-to-zero, against the float64 CPU core: loss within 1e-4 absolute (losses are
    above 100) and the gradient within 1e-5, without a log-space pass."""
    from cyctc import _cpu

    rng = np.random.default_rng(10)
    if kind == "confident":
        raw, labels, ll, tl = _confident_case(rng, 1, 10000, 29, 2000, np.float32, peak=3.0)
    else:
        raw, labels, ll, tl = _confident_case(rng, 2, 3000, 29, 300, np.float32, peak=0.0)
        ll[1], tl[1] = 200, 2500
        labels[1, 200:] = 0
    run = harness.loss_run(str(tmp_path), raw, False, labels, ll, tl, 0, True)
    res = run(drivers["plain"], "FIBER_FWD", 0)
    x64 = raw.astype(np.float64)
    g64 = np.empty_like(x64)
    ref_loss = _cpu.ctc_loss_grad(x64, labels, ll, tl, 0, True, g64, np.ones(len(ll)), 1)
    assert (ref_loss > 100).all()
    cases.assert_loss_close(res["loss"], ref_loss, 1e-6)
    # both stay on the scaled path (block exponents give rows any range): T + 3 barrier steps, no log-space pass
    assert res["_barriers"][_chain_name(raw, labels)] == raw.shape[1] + 3
    np.testing.assert_allclose(res["grad"], g64, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_long_random_input_stays_on_the_scaled_path(seed, drivers, tmp_path):
    """Issue 20's no-cliff rule in the emulation: random-normal logits (an untrained model), (1, 20000, 32, 4000),
    float32 with flush-to-zero, loss only: the chain (S = 8001 states, 3 tiles of 384 threads) passes T + 3
    barriers, so it took no log-space pass, and its loss agrees with the float64 CPU core."""
    from cyctc import _cpu

    rng = np.random.default_rng(100 + seed)
    T, C, L = 20000, 32, 4000
    raw = rng.standard_normal((1, T, C)).astype(np.float32)
    labels = rng.integers(1, C, size=(1, L)).astype(np.int32)
    ll, tl = np.array([L], np.int32), np.array([T], np.int32)
    res = harness.loss_run(str(tmp_path), raw, False, labels, ll, tl, 0, True, want_grad=False)(
        drivers["plain"], "FIBER_FWD", 0)
    assert res["_barriers"]["cyctc_chain<float, 8, true>"] == T + 3
    ref = _cpu.ctc_loss_grad(raw.astype(np.float64), labels, ll, tl, 0, True, None, None, 1)
    np.testing.assert_allclose(res["loss"], ref, rtol=2e-6)


def _chain_name(raw, labels):
    """The chain kernel the plan launches for these logits and labels."""
    K, cpb, nthr, ntile = _backend.chain_geometry(2 * labels.shape[1] + 1, raw.dtype)
    return f"cyctc_chain<{_backend.CTYPES[raw.dtype.name]}, {K}, {'true' if ntile > 1 else 'false'}>"


def test_flush_to_zero_does_not_change_the_decisions(drivers, tmp_path):
    """The float32 kernels give the same losses and gradients, bit for bit (gradient entries in the normal range),
    with and without flush-to-zero (they zero every product below the normal range themselves, so the flush
    detection never relies on subnormals existing, and the gradient kernel reads a stored beta below TH as 0
    however the device rounded it)."""
    case = cases.load_loss_case(next(p for p in LOSS_FILES if os.path.basename(p).startswith("013")))
    out = []
    for ftz in (True, False):
        run = harness.loss_run(str(tmp_path / str(ftz)), case.raw, case.time_major, case.labels, case.label_length,
                               case.logit_length, case.blank, case.merge_repeated, ftz=ftz)
        res = run(drivers["plain"], "FIBER_FWD", 0)
        cases.check_loss_grad(case, res["loss"], harness.grad_view(res, case.time_major))
        out.append((res["loss"], res["grad"]))
    assert _same_bits(out[0][0], out[1][0]) and _same_bits(_normal(out[0][1]), _normal(out[1][1]))
    # a confident model far from its labels: products below the range in every frame
    rng = np.random.default_rng(31)
    raw, labels, ll, tl = _confident_case(rng, 3, 120, 6, 30, np.float32, peak=40.0)
    raw = raw[:, ::-1].copy()  # the peaks in the wrong order
    out = []
    for ftz in (True, False):
        res = harness.loss_run(str(tmp_path / f"c{ftz}"), raw, False, labels, ll, tl, 0, True, ftz=ftz)(
            drivers["plain"], "FIBER_FWD", 0)
        out.append((res["loss"], res["grad"]))
    assert np.isfinite(out[0][0]).all()
    assert _same_bits(out[0][0], out[1][0]) and _same_bits(_normal(out[0][1]), _normal(out[1][1]))


def _normal(g):
    """A float32 gradient with its subnormal entries as 0: the gradient's own last operation (softmax less
    occupancy) may round into the subnormal range, where a device flushing to zero writes 0."""
    return np.where(np.abs(g) < np.finfo(np.float32).tiny, np.float32(0), g)


# ---------------------------------------------------------------------------------------------------------------
# 5. the device memory budget (issue 18, item 4)

def _random_case(seed, dtype, B, T, C, Lmax, scale=1.0):
    rng = np.random.default_rng(seed)
    raw = (rng.standard_normal((B, T, C)) * scale).astype(dtype)
    ll = rng.integers(max(1, Lmax // 2), Lmax + 1, size=B).astype(np.int32)
    ll[0] = Lmax
    tl = np.array([T] + [int(rng.integers(2 * Lmax + 1, T + 1)) for _ in range(B - 1)], np.int32)
    labels = np.zeros((B, Lmax), np.int32)
    for b in range(B):
        labels[b, :ll[b]] = rng.integers(1, C, size=ll[b])
    for i in range(1, Lmax):  # the full-length example without adjacent repeats: T >= 2 Lmax + 1 frames suffice
        if labels[0, i] == labels[0, i - 1]:
            labels[0, i] = labels[0, i] % (C - 1) + 1
    return raw, labels, ll, tl


# (dtype, B, T, C, Lmax, merge_repeated): one-warp chains, a multi-warp chain, and tiles (float64 S = 1541: 386
# blocks of 4 on 384 threads, 2 tiles); at least 2 Lmax + 1 frames for every example
BUDGET_CASES = [("float32", 3, 37, 6, 9, True), ("float64", 3, 30, 5, 12, False), ("float32", 2, 300, 7, 130, True),
                ("float64", 1, 1545, 5, 770, True)]


@pytest.mark.parametrize("case", BUDGET_CASES, ids=lambda c: f"{c[0]}-B{c[1]}T{c[2]}L{c[4]}")
def test_budget_plans_give_the_same_bits(case, drivers, tmp_path):
    """Issue 18, item 4: a plan within a device memory budget (no probability buffer, the chains computing the
    probabilities from the logits; with a gradient, checkpoints every k frames and the rows of one segment at a
    time, recomputed from them) gives exactly the bits of the unlimited plan, for every k, loss-only and gradient
    calls alike."""
    dtype, B, T, C, Lmax, merge = case
    raw, labels, ll, tl = _random_case(len(tmp_path.name), np.dtype(dtype), B, T, C, Lmax)
    args = (raw, False, labels, ll, tl, 0, merge)
    full = harness.loss_run(str(tmp_path / "full"), *args)(drivers["plain"], "FIBER_RAND", 2)
    ref_loss, ref_grad = cases.numpy_ctc(raw, labels, ll, tl, 0, merge)
    cases.assert_loss_close(full["loss"], ref_loss, 1e-6 if dtype == "float32" else 1e-12)
    for k in sorted({1, 3, T // 3 + 1, T}):
        run = harness.loss_run(str(tmp_path / f"k{k}"), *args, budget_k=k)
        assert sum("cyctc_grad" in ln.kernel for ln in run.plan.launches) == -(-T // k)
        res = run(drivers["plain"], "FIBER_RAND", 3)
        np.testing.assert_array_equal(res["loss"].view(np.int64), full["loss"].view(np.int64))
        np.testing.assert_array_equal(res["grad"], full["grad"])
    loss_only = harness.loss_run(str(tmp_path / "lo"), *args, want_grad=False)(drivers["plain"], "FIBER_FWD", 0)
    budget_lo = harness.loss_run(str(tmp_path / "blo"), *args, want_grad=False, budget_k=0)(
        drivers["plain"], "FIBER_FWD", 0)
    np.testing.assert_array_equal(budget_lo["loss"].view(np.int64), loss_only["loss"].view(np.int64))
    np.testing.assert_array_equal(loss_only["loss"].view(np.int64), full["loss"].view(np.int64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_budget_plans_leave_log_space_to_the_glue(dtype, drivers, tmp_path):
    """A direction that needs the log-space fallback keeps no rows in a budget plan: its first pass marks it
    fmt = 2 (the glue recomputes that example without the budget, or raises MemoryError), exactly the directions
    the unlimited plan computed in log space (fmt = 1); loss-only budget plans run the fallback themselves."""
    # every frame gives the label a probability below the range (e^-2000 double, e^-200 float): log space
    x = np.array([[0.0, -2000.0 if dtype == np.float64 else -200.0]] * 3)
    lab, blank = [1], 0
    raw = np.concatenate([x[None], x[None] * 0.01]).astype(dtype)  # the second example stays scaled
    labels = np.array([lab, lab], np.int32)
    ll, tl = np.array([len(lab)] * 2, np.int32), np.array([x.shape[0]] * 2, np.int32)
    args = (raw, False, labels, ll, tl, blank, True)
    full = harness.loss_run(str(tmp_path / "f"), *args, extra_outputs=("fmt",))(drivers["plain"], "FIBER_FWD", 0)
    bud = harness.loss_run(str(tmp_path / "b"), *args, budget_k=2, extra_outputs=("fmt",))(
        drivers["plain"], "FIBER_FWD", 0)
    assert (full["fmt"] == 1).any() and not (full["fmt"][:, 1] == 1).any()
    np.testing.assert_array_equal(bud["fmt"] == 2, full["fmt"] == 1)
    assert np.isnan(bud["loss"][0]) == (full["fmt"][0, 0] == 1)
    np.testing.assert_array_equal(bud["loss"][1], full["loss"][1])
    np.testing.assert_array_equal(bud["grad"][1], full["grad"][1])
    assert not bud["grad"][0].any()  # left for the glue
    lo = harness.loss_run(str(tmp_path / "l"), *args, want_grad=False, budget_k=0)(drivers["plain"], "FIBER_FWD", 0)
    np.testing.assert_array_equal(lo["loss"], full["loss"])


def test_budget_plan_of_the_hour_fits():
    """The hour (1, 180000, 32, 50000) float32 with a gradient: the unlimited plan needs ~144 GB of device work
    space; under the default budget (1 GiB) the plan's workspaces fit, with checkpoints every k frames (k about
    sqrt(T)) and 2 launches a segment; loss-only calls need no checkpoints. Too small a budget: MemoryError naming
    the least."""
    B, T, C, L = 1, 180000, 32, 50000
    for grad in (True, False):
        kw = dict(blank=0, merge_repeated=True, grad_strides=(T * C, C) if grad else None)
        full = _backend.launch_config(B, T, C, L, "float32", (T * C, C), **kw)
        assert _backend.plan_bytes(full) > 2 ** 30
        plan = _backend.launch_config(B, T, C, L, "float32", (T * C, C), memory_limit=2 ** 30, **kw)
        assert _backend.plan_bytes(plan) <= 2 ** 30
        sizes = dict((n, c) for n, _, c in plan.workspaces)
        assert sizes["prob"] == 1
        chains = [ln for ln in plan.launches if "chain" in ln.kernel]
        assert all(ln.kernel == "cyctc_chain<float, 8, true>" for ln in chains)
        if grad:
            k = chains[0].args[-3][1]
            assert 100 <= k <= 2000 and len(chains) == 1 + -(-T // k)
            assert sizes["arows"] == _backend.row_values(B * k, 2 * L + 1, 8) and _backend.is_budget_grad_plan(plan)
        else:
            assert len(chains) == 1 and chains[0].args[-3][1] == 0 and not _backend.is_budget_grad_plan(plan)
    with pytest.raises(MemoryError, match=r"memory_limit=1000000 bytes is below the \d+ bytes"):
        _backend.launch_config(B, T, C, L, "float32", (T * C, C), blank=0, merge_repeated=True,
                               grad_strides=(T * C, C), memory_limit=10 ** 6)


def test_budget_glue_recomputes_what_the_first_pass_left(monkeypatch):
    """ctc_loss_grad under a memory_limit: a budget plan, and where its first pass marks an example fmt = 2 (log
    space needed, no rows kept), the glue recomputes that example alone with the unlimited plan when it fits the
    budget (one device-to-host copy of fmt), and raises MemoryError naming memory_limit when it does not."""
    cp = fake_cupy.install(monkeypatch)
    B, T, C, Lmax = 3, 50, 5, 6
    kernels = {}

    class Marking(fake_cupy.Kernel):  # the first pass of a budget plan leaves example 1's backward chain
        def __call__(self, grid, block, args, shared_mem=0):
            super().__call__(grid, block, args, shared_mem)
            if self.name.startswith("cyctc_chain") and int(args[-3]) > 0 and int(args[-1]) < 0:
                # fmt[dir 1, b 1] (args[11]: B), through the workspace's address (args[21]) as a kernel would
                ctypes.c_int32.from_address(int(args[21]) + 4 * (int(args[11]) + 1)).value = 2

    def get_function(device_id, source, name):
        if name not in kernels:
            kernels[name] = Marking(name)
        return kernels[name]
    monkeypatch.setattr(_backend, "get_function", get_function)
    plan_args = (B, T, C, Lmax, "float32", (T * C, C))
    kw = dict(blank=0, merge_repeated=True, grad_strides=(T * C, C))
    chain_args = _backend._plan(*plan_args, 0, True, (T * C, C), budget_k=None).launches[1].args
    assert chain_args[21] == ("buf", "fmt") and chain_args[11] == ("i32", B)
    full = _backend.plan_bytes(_backend.launch_config(*plan_args, **kw))
    one = _backend.plan_bytes(_backend.launch_config(1, T, C, Lmax, "float32", (T * C, C), **kw)) + 2 * T * C * 4
    limit = max(one, _backend.plan_bytes(_backend.budget_plan(*plan_args, 0, True, (T * C, C),
                                                              memory_limit=full)))
    assert limit < full
    x = cp.asarray(np.zeros((B, T, C), np.float32))
    labels = np.ones((B, Lmax), np.int32)
    _backend.ctc_loss_grad(x, labels, [Lmax] * B, [T] * B, 0, True, cp.empty((B, T, C), np.float32), None,
                           memory_limit=limit)
    chains = kernels["cyctc_chain<float, 8, true>"].calls
    assert int(chains[0][2][-3]) > 0 and len(chains) == 1 + -(-T // int(chains[0][2][-3]))
    again = kernels["cyctc_chain<float, 8, false>"].calls  # example 1 alone, unlimited
    assert len(again) == 1 and int(again[0][2][11]) == 1 and int(again[0][2][-3]) == 0
    kernels.clear()
    tight = one - 1  # a budget plan fits (about 8.6 KB), the one example's unlimited rerun does not
    assert _backend.plan_bytes(_backend.launch_config(*plan_args, memory_limit=tight, **kw)) <= tight
    with pytest.raises(MemoryError, match=rf"memory_limit={tight} bytes: 1 example\(s\) need the log-space fallback"):
        _backend.ctc_loss_grad(x, labels, [Lmax] * B, [T] * B, 0, True, cp.empty((B, T, C), np.float32), None,
                               memory_limit=tight)
