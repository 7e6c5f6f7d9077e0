"""The public C API (cyctc/include/cyctc.h): a C++ program compiled against the installed package with g++, as a
Kaldi binary would be, returns the same numbers as the Python API, bit for bit."""
import os
import shutil
import subprocess

import numpy as np
import pytest

import cyctc
from cyctc import _args, _cpu

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("gcc") is None,
                                reason="needs gcc and g++ on PATH to compile the C API example")

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER_FIELDS = ("itemsize", "time_major", "T", "B", "C", "Lmax", "blank", "merge_repeated", "num_threads",
                 "has_logit_lengths", "want_grad")


def _compile(tmp, omp, extra=()):
    flags = (["-O2", "-fopenmp"] if omp else ["-O2"]) + list(extra)
    if os.environ.get("CYCTC_SANITIZE", "").lower() in ("1", "true", "yes", "on"):
        # the sanitizer build of the package has one code path (no per-instruction-set clones, see ctc_common.h):
        # the example must take the same one to give the same bits, and is checked the same way
        flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    objs = []
    for src in cyctc.get_sources():
        obj = os.path.join(tmp, os.path.basename(src) + ".o")
        subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", *flags, "-c", src, "-o", obj],
                       check=True, capture_output=True, text=True)
        objs.append(obj)
    exe = os.path.join(tmp, "capi_example")
    subprocess.run(["g++", "-std=c++11", "-Wall", "-Wextra", "-Werror", *flags, "-I", cyctc.get_include(),
                    os.path.join(HERE, "capi_example.cpp"), *objs, "-o", exe, "-lm"],
                   check=True, capture_output=True, text=True)
    return exe


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """Path of the compiled example program (with OpenMP when the compiler has it)."""
    tmp = str(tmp_path_factory.mktemp("capi"))
    try:
        return _compile(tmp, omp=True)
    except subprocess.CalledProcessError as e:
        if "fopenmp" not in (e.stderr or "") and "omp" not in (e.stderr or ""):
            pytest.fail(f"compiling the C API example failed:\n{e.stderr}")
        return _compile(tmp, omp=False)


def _problem(rng, dtype, T=13, B=6, C=7, blank=3, peaked=False):
    """Random logits (T, B, C) and labels avoiding the blank: a repeat, an empty label, an infeasible example,
    a zero-length example, and varied logit lengths."""
    x = rng.normal(size=(T, B, C)) * (50.0 if peaked else 1.0)
    nonblank = np.array([c for c in range(C) if c != blank])
    Lmax = 5
    labels = nonblank[rng.integers(0, len(nonblank), size=(B, Lmax))].astype(np.int32)
    labels[0, 1] = labels[0, 0]                                 # adjacent repeat
    label_length = np.array([4, 5, 0, 3, 5, 2][:B], dtype=np.int32)
    logit_length = np.array([T, T - 2, 5, 2, 0, T - 1][:B], dtype=np.int32)  # example 3 infeasible, 4 empty
    label_length[4] = 0
    return x.astype(dtype), labels, label_length, logit_length


def _run_c(exe, tmp, x_tm, labels, label_length, logit_length, blank, time_major, merge_repeated, num_threads,
           want_grad):
    T, B, C = x_tm.shape
    x = x_tm if time_major else np.ascontiguousarray(x_tm.swapaxes(0, 1))
    hdr = dict(itemsize=x.itemsize, time_major=int(time_major), T=T, B=B, C=C, Lmax=labels.shape[1], blank=blank,
               merge_repeated=int(merge_repeated), num_threads=num_threads,
               has_logit_lengths=int(logit_length is not None), want_grad=int(want_grad))
    inp, out = os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.bin")
    with open(inp, "wb") as f:
        f.write(np.array([hdr[k] for k in HEADER_FIELDS], dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(x).tobytes())
        f.write(np.ascontiguousarray(labels, dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(label_length, dtype="<i4").tobytes())
        if logit_length is not None:
            f.write(np.ascontiguousarray(logit_length, dtype="<i4").tobytes())
    subprocess.run([exe, inp, out], check=True)
    raw = open(out, "rb").read()
    status = int(np.frombuffer(raw[:4], dtype="<i4")[0])
    vals = np.frombuffer(raw[4:], dtype=x.dtype)
    loss = vals[:B]
    grad = vals[B:].reshape(x.shape) if want_grad else None
    return status, loss, grad


def _python(x_tm, labels, label_length, logit_length, blank, time_major, merge_repeated):
    x = x_tm if time_major else np.ascontiguousarray(x_tm.swapaxes(0, 1))
    if merge_repeated:
        return cyctc.ctc_loss(labels, x, label_length, logit_length, logits_time_major=time_major,
                              blank_index=blank, return_grad=True, num_threads=1)
    # merge_repeated=False is only reachable through the backend entry point (public: ctc_loss_v1)
    a = _args.normalize_loss_args(labels, x, label_length, logit_length, time_major, None, blank)
    grad = np.empty_like(x)
    view = grad.swapaxes(0, 1) if time_major else grad
    loss = _cpu.ctc_loss_grad(a.x, a.labels, a.label_length, a.logit_length, a.blank, False, view,
                              np.ones(a.B), 1)
    return loss.astype(x.dtype), grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("time_major", [True, False])
@pytest.mark.parametrize("num_threads", [1, 2, -1])
def test_matches_python_bitwise(example, tmp_path, dtype, time_major, num_threads):
    rng = np.random.default_rng(17)
    x, labels, ll, tl = _problem(rng, dtype)
    status, loss, grad = _run_c(example, str(tmp_path), x, labels, ll, tl, 3, time_major, True, num_threads, True)
    assert status == 0
    want_loss, want_grad = _python(x, labels, ll, tl, 3, time_major, True)
    assert np.isinf(loss[3]) and loss[4] == 0  # infeasible, and empty
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)
    # loss-only call: same losses, and no gradient work
    status, loss2, _ = _run_c(example, str(tmp_path), x, labels, ll, tl, 3, time_major, True, num_threads, False)
    assert status == 0
    np.testing.assert_array_equal(loss2, want_loss)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plain_c_build_agrees(tmp_path, dtype):
    """The kernel as a compiler without GCC's vector extensions and target clones builds it (MSVC: plain loops,
    scalar exponentials, one code path) gives the package's numbers to rounding."""
    exe = _compile(str(tmp_path), omp=False, extra=["-DCYCTC_NO_VECTOR_EXT", "-DCYCTC_NO_CLONES"])
    rng = np.random.default_rng(23)
    x, labels, ll, tl = _problem(rng, dtype, T=30, C=41)  # C above two vectors, with a partial one
    x[:, 2] *= 30.0                                        # confident frames as well
    for peaked in (False, True):
        if peaked:
            x, labels, ll, tl = _problem(rng, dtype, T=30, C=41, peaked=True)  # the log-space path
        status, loss, grad = _run_c(exe, str(tmp_path), x, labels, ll, tl, 3, True, True, 1, True)
        assert status == 0
        want_loss, want_grad = _python(x, labels, ll, tl, 3, True, True)
        tol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(loss, want_loss, rtol=tol)
        np.testing.assert_allclose(grad, want_grad, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_space_fallback_and_negative_blank(example, tmp_path, dtype):
    """Peaked logits force the kernel's log-space path; blank=-1 counts from C; no logit lengths (all T)."""
    rng = np.random.default_rng(5)
    x, labels, ll, _ = _problem(rng, dtype, blank=6, peaked=True)
    status, loss, grad = _run_c(example, str(tmp_path), x, labels, ll, None, -1, False, True, 2, True)
    assert status == 0
    want_loss, want_grad = _python(x, labels, ll, None, -1, False, True)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("time_major", [True, False])
def test_merge_repeated_false(example, tmp_path, time_major):
    rng = np.random.default_rng(8)
    x, labels, ll, tl = _problem(rng, np.float64, blank=0)
    status, loss, grad = _run_c(example, str(tmp_path), x, labels, ll, tl, 0, time_major, False, 2, True)
    assert status == 0
    want_loss, want_grad = _python(x, labels, ll, tl, 0, time_major, False)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)
    # the repeat makes the two models differ
    std_loss, _ = _python(x, labels, ll, tl, 0, time_major, True)
    assert loss[0] != std_loss[0]


def test_nonfinite_logits(example, tmp_path):
    rng = np.random.default_rng(2)
    x, labels, ll, tl = _problem(rng, np.float32)
    x[1, 0, 2] = np.nan
    status, loss, grad = _run_c(example, str(tmp_path), x, labels, ll, tl, 3, True, True, 1, True)
    assert status == 0 and np.isnan(loss[0]) and np.isnan(grad[:tl[0], 0]).all()
    want_loss, want_grad = _python(x, labels, ll, tl, 3, True, True)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)


EXPECTED_STATUS = {
    "ok": 0, "ok_double": 0, "ok_empty_batch": 0,
    "null_logits": 1, "null_labels": 1, "null_label_lengths": 1, "null_losses": 1,
    "negative_T": 2, "negative_B": 2, "zero_C": 2, "negative_Lmax": 2, "huge": 2,
    "bad_time_major": 3, "bad_merge": 3, "blank_high": 4, "blank_low": 4,
    "label_length_gt_Lmax": 5, "logit_length_gt_T": 5, "negative_logit_length": 5,
    "label_out_of_range": 6, "label_is_blank": 6, "zero_threads": 7, "grad_is_logits": 8, "unknown_code": 99,
}


def test_status_codes(example):
    out = subprocess.run([example, "--errors"], check=True, capture_output=True, text=True).stdout.splitlines()
    got = {}
    for line in out[:-1]:
        name, code, msg = line.split(" ", 2)
        got[name] = (int(code), msg)
    assert {k: v[0] for k, v in got.items()} == EXPECTED_STATUS
    assert got["ok"][1] == "success" and got["unknown_code"][1] == "unknown status"
    assert "blank" in got["label_is_blank"][1] and "num_threads" in got["zero_threads"][1]
    assert len({msg for code, msg in got.values()}) == len(set(EXPECTED_STATUS.values()))
    assert out[-1] == "untouched 1"


def test_demo_matches_python(example):
    """The self-contained example in capi_example.cpp (batch-major, blank 0) against cyctc.ctc_loss."""
    out = subprocess.run([example], check=True, capture_output=True, text=True).stdout.split()
    T, B, C = 3, 2, 4
    logits = np.sin(np.float32(0.7) * np.arange(B * T * C, dtype=np.float32)).reshape(B, T, C)
    want = cyctc.ctc_loss(np.array([[1, 2], [3, 0]]), logits, [2, 1], logits_time_major=False)
    np.testing.assert_allclose(np.array(out, dtype=np.float32), want, rtol=1e-6)


@pytest.mark.parametrize("compiler,std", [("gcc", "-std=c99"), ("g++", "-std=c++17")])
def test_sources_compile_warning_free(compiler, std, tmp_path):
    for src in cyctc.get_sources():
        lang = ["-x", "c++"] if compiler == "g++" else []
        subprocess.run([compiler, *lang, std, "-Wall", "-Wextra", "-Werror", "-fopenmp", "-fsyntax-only", src],
                       check=True)
    assert os.path.isfile(os.path.join(cyctc.get_include(), "cyctc.h"))


@pytest.mark.parametrize("want_grad", [False, True])
def test_underflow_and_magnitudes_exact(example, tmp_path, want_grad):
    """Issue 13, items 0-2 through the C API: a state lost to an underflowed product (loss-only calls too), equal
    logits of 1e30 and non-blank logits at -1e30 give the exact values, as the Python API does."""
    from ctc_reference import ctc_logspace
    from test_underflow import ISSUE_LOGITS
    huge = np.full((11, 4), 1e30)
    neg = np.full((11, 4), -1e30)
    neg[:, 0] = np.linspace(-1, 1, 11)
    x = np.stack([ISSUE_LOGITS, huge, neg], axis=1)  # (T, B, C)
    labels = np.array([[3], [1], [2]], dtype=np.int32)
    ll = np.array([1, 1, 1], dtype=np.int32)
    status, loss, grad = _run_c(example, str(tmp_path), x, labels, ll, None, 0, True, True, 2, want_grad)
    assert status == 0
    ref = [ctc_logspace(ISSUE_LOGITS, [3], 0), ctc_logspace(np.zeros((11, 4)), [1], 0)]
    stand_in = np.where(neg < -1e29, -2000.0, neg)
    ref.append(ctc_logspace(stand_in, [2], 0))
    assert loss[0] == pytest.approx(ref[0][0], rel=1e-13)
    assert loss[1] == pytest.approx(ref[1][0], rel=1e-13)
    assert loss[2] == pytest.approx(1e30, rel=1e-13)
    if want_grad:
        for b in range(3):
            np.testing.assert_allclose(grad[:, b], ref[b][1], atol=1e-13)


@pytest.mark.parametrize("kind", ["random", "peaked", "cliff"])
def test_state_by_state_step_agrees(tmp_path, kind):
    """The kernel built with CYCTC_CARRY_MAX=2 takes the state-by-state step (ctc_rows.h: fwd_exact / bwd_exact,
    with blocks rescaled to their neighbour and the lost-mass marks of every state) wherever two neighbouring blocks
    differ by more than 4x, i.e. on almost every frame: it must give the reference's numbers, and those of the
    package's vectorised step to rounding."""
    from test_long_inputs import family, reference
    exe = _compile(str(tmp_path), omp=False, extra=["-DCYCTC_CARRY_MAX=2"])
    T, L = (900, 180) if kind == "cliff" else (60, 20)
    x, labels = family("peaked" if kind == "peaked" else "random", T, L, 3, np.float64)
    if kind != "cliff":
        x = np.concatenate([x, 3.0 * x[:, ::-1]], axis=0)
        labels = np.concatenate([labels, labels[:, ::-1]], axis=0)
    B = x.shape[0]
    x_tm = np.ascontiguousarray(x.swapaxes(0, 1))
    ll = np.full(B, L, np.int32)
    status, loss, grad = _run_c(exe, str(tmp_path), x_tm, labels, ll, None, 0, True, True, 1, True)
    assert status == 0
    want_loss, want_grad = _python(x_tm, labels, ll, None, 0, True, True)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-11)
    for b in range(B):
        ref_loss, ref_grad = reference(x[b], labels[b])
        assert loss[b] == pytest.approx(ref_loss, rel=1e-12)
        np.testing.assert_allclose(grad[:, b], ref_grad, rtol=0, atol=1e-10)
