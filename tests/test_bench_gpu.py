"""benchmarks/bench_gpu.py and benchmarks/gpu_check.sh without a GPU.

bench_gpu.py's dry run goes through the same argument parsing, problem building, correctness checks, interleaved
timing, table and JSON code as a GPU run (numpy arrays, cyctc's CPU backend, host clock). gpu_check.sh is checked
with ``bash -n`` and shellcheck (when installed), and its control flow (phases, fallbacks, exit status) is run with
a stand-in ``python3`` whose pip / pytest / benchmark outcomes each test chooses.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
SCRIPT = os.path.join(BENCH, "gpu_check.sh")
sys.path.insert(0, BENCH)

import bench_gpu  # noqa: E402
import fake_cupy  # noqa: E402

from cyctc.cuda import _backend  # noqa: E402


def test_dry_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = bench_gpu.main(["--dry-run", "--shapes", "tiny", "mini=3,30,6,5", "--rounds", "2", "--min-sample-ms", "1",
                         "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| tiny (1, 50, 20, 10) |" in text and "| mini (3, 30, 6, 5) |" in text
    data = json.loads(out.read_text())
    assert [r["shape"] for r in data["results"]] == ["tiny", "mini"]
    for r in data["results"]:
        assert set(r["grad"]) == {"cyctc", "cyctc-devlen"}
        assert all(c["ok"] for c in r["checks"].values())
        for v in r["grad"].values():
            assert len(v["samples"]) == 2 and v["median"] > 0 and v["inner"] >= 1
    assert "dry run" in data["environment"]["gpu"]


def test_budget_skips_the_remaining_shapes(capsys):
    assert bench_gpu.main(["--dry-run", "--shapes", "tiny", "ocr", "--rounds", "1", "--budget-s", "1e-9"]) == 0
    text = capsys.readouterr().out
    assert "| tiny | skipped: time budget of 0 s spent |" in text
    assert "| ocr | skipped: time budget of 0 s spent |" in text


def test_a_failing_shape_is_reported_and_fails_the_run(monkeypatch, capsys):
    real = bench_gpu.run_shape

    def run_shape(name, *a):
        if name == "ocr":
            raise MemoryError("out of device memory")
        return real(name, *a)
    monkeypatch.setattr(bench_gpu, "run_shape", run_shape)
    assert bench_gpu.main(["--dry-run", "--shapes", "tiny", "ocr", "--rounds", "1", "--min-sample-ms", "1"]) == 1
    text = capsys.readouterr().out
    assert "| ocr | skipped: MemoryError: out of device memory |" in text and "FAILED shapes: ocr" in text
    assert "| tiny (1, 50, 20, 10) | " in text


def test_no_device_is_a_failure_not_a_pass(monkeypatch, capsys):
    monkeypatch.setattr(bench_gpu, "gpu_ready", lambda: (None, "no CUDA device (cudaErrorNoDevice)"))
    assert bench_gpu.main(["--shapes", "tiny"]) == bench_gpu.NOTHING_MEASURED == 2
    assert "FAILED: nothing measured: no CUDA device (cudaErrorNoDevice)" in capsys.readouterr().out


def test_a_raising_backend_is_a_failure(monkeypatch, capsys):
    """CuPy and a device present (the stand-in), but cyctc's CUDA backend raises on the tiny probe problem."""
    fake_cupy.install(monkeypatch)
    monkeypatch.setattr(bench_gpu, "gpu_ready", lambda: (fake_cupy, None))

    def broken(*a, **k):
        raise RuntimeError("cudaErrorInvalidValue: invalid argument")
    monkeypatch.setattr(_backend, "loss_and_grad", broken)
    assert bench_gpu.main(["--shapes", "tiny", "--json", "unused.json"]) == 2
    out = capsys.readouterr().out
    assert "FAILED: nothing measured: cyctc's CUDA backend raised on a tiny problem (RuntimeError: " in out


def test_cyctc_not_importable_is_a_failure(monkeypatch, capsys):
    fake_cupy.install(monkeypatch)
    monkeypatch.setattr(bench_gpu, "gpu_ready", lambda: (fake_cupy, None))
    monkeypatch.setitem(sys.modules, "cyctc", None)  # import cyctc raises ImportError
    assert bench_gpu.main(["--shapes", "tiny"]) == 2
    assert "FAILED: nothing measured: cyctc is not importable" in capsys.readouterr().out


def test_json_is_written_after_every_shape(tmp_path, monkeypatch):
    """A run killed during its second shape keeps the first shape's results (complete: false); a finished run says
    complete: true."""
    out = tmp_path / "r.json"
    real = bench_gpu.run_shape
    seen = {}

    def run_shape(name, *a):
        if name == "mini":
            seen["during"] = json.loads(out.read_text())
            raise KeyboardInterrupt  # what a phase timeout's signal does to the run: nothing after this executes
        return real(name, *a)
    monkeypatch.setattr(bench_gpu, "run_shape", run_shape)
    with pytest.raises(KeyboardInterrupt):
        bench_gpu.main(["--dry-run", "--shapes", "tiny", "mini=3,30,6,5", "--rounds", "1", "--min-sample-ms", "1",
                        "--json", str(out)])
    for data in (seen["during"], json.loads(out.read_text())):
        assert data["complete"] is False and data["shapes"] == ["tiny", "mini"]
        assert [r["shape"] for r in data["results"]] == ["tiny"] and data["results"][0]["grad"]["cyctc"]["median"] > 0
        assert "environment" in data
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left beside it
    monkeypatch.setattr(bench_gpu, "run_shape", real)
    assert bench_gpu.main(["--dry-run", "--shapes", "tiny", "--rounds", "1", "--min-sample-ms", "1",
                           "--json", str(out)]) == 0
    assert json.loads(out.read_text())["complete"] is True


def test_quick_shapes():
    assert [n for n, _ in bench_gpu.parse_args(["--quick"]).shapes] == ["speech-char", "long", "one-long", "training"]
    assert [n for n, _ in bench_gpu.parse_args(["--quick", "--shapes", "tiny"]).shapes] == ["tiny"]
    assert all(n in bench_gpu.GPU_SHAPES for n in bench_gpu.QUICK_SHAPES)


@pytest.mark.parametrize("text, version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version: gcc",
     "535.104.05"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs@U16)", "570.86.15"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  580.65.06  Release Build", "580.65.06"),
    ("", None),
    ("no driver here", None),
])
def test_nvidia_driver_version_is_parsed(text, version):
    assert bench_gpu.parse_nvidia_driver(text) == version


def test_device_environment_names_gpu_and_driver(monkeypatch):
    """CupyDevice.info (GPU runs only) with a stand-in for CuPy's runtime: the JSON's GPU name and driver fields."""
    from types import SimpleNamespace as NS

    props = {"name": b"NVIDIA H200", "major": 9, "minor": 0, "multiProcessorCount": 132, "totalGlobalMem": 141 << 30}
    rt = NS(getDeviceProperties=lambda i: props, driverGetVersion=lambda: 13000, runtimeGetVersion=lambda: 12080)
    cp = NS(cuda=NS(Device=lambda: NS(id=0), runtime=rt), __version__="14.2.0")
    monkeypatch.setattr(bench_gpu, "nvidia_driver_version", lambda: "570.86.15")
    info = bench_gpu.CupyDevice(cp).info()
    assert (info["gpu"], info["driver"], info["cuda_driver"], info["cuda_runtime"]) == \
        ("NVIDIA H200", "570.86.15", "13.0", "12.8")
    assert (info["compute_capability"], info["sm_count"], info["memory_gib"]) == ("9.0", 132, 141.0)


def test_environment_names_the_commit():
    head = subprocess.run(["git", "-C", BENCH, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    commit = bench_gpu.environment(bench_gpu.DryDevice(), None)["commit"]
    if head.returncode == 0:
        assert commit.split("+")[0] == head.stdout.strip()
    else:  # not a git checkout (an unpacked sdist)
        assert commit is None


def test_parse_shapes():
    assert bench_gpu.parse_shapes(["tiny", "x=1,2,3,4"]) == [("tiny", (1, 50, 20, 10)), ("x", (1, 2, 3, 4))]
    assert [n for n, _ in bench_gpu.parse_shapes(None)][-1] == "training"
    assert dict(bench_gpu.parse_shapes(None))["training"] == (64, 1000, 5000, 200)
    for bad in (["nope"], ["x=1,2,3"], ["x=1,2,0,4"], ["x=a,b,c,d"]):
        with pytest.raises(ValueError, match="--shapes"):
            bench_gpu.parse_shapes(bad)
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--rounds", "0"])


@pytest.mark.parametrize("labels, inputs, T, blank, dtype, ok, why", [
    ([255, 3], [10, 10], 10, 0, "float32", False, "label of 255"),  # label longer than its input
    ([255, 3], [300, 300], 300, 0, "float32", True, ""),
    ([256, 3], [300, 300], 300, 0, "float32", False, "256 >= 256"),
    ([5, 3], [300, 299], 300, 0, "float32", False, "differ from T"),
    ([5, 3], [300, 300], 300, 1, "float32", False, "blank"),
    ([5, 3], [300, 300], 300, 0, "float64", False, "float32"),
    ([], [], 7, 0, "float32", True, ""),
])
def test_cudnn_conditions_follow_pytorch(labels, inputs, T, blank, dtype, ok, why):
    """PyTorch's _use_cudnn_ctc_loss: blank 0, float32, every input length == T, label length < 256 and <= input."""
    got, reason = bench_gpu.cudnn_eligible(np.array(labels, int), np.array(inputs, int), T, blank, dtype)
    assert got is ok
    if why == "label of 255":
        assert "longer than its input" in reason
    else:
        assert why in reason


def test_glue_overhead_mode(monkeypatch, capsys):
    rows = bench_gpu.glue_overhead(repeats=1, calls=1, patch=monkeypatch)
    assert {kind for _, kind, _, _ in rows} == {"numpy", "cupy"}
    for name, kind, seconds, counts in rows:
        assert seconds > 0 and counts["syncs"] == (1 if kind == "cupy" else 0), (name, kind, counts)
        assert counts["h2d"] <= 2
    assert "ctc_greedy_decoder" in capsys.readouterr().out


def test_format_table_ratios():
    g = {k: dict(median=m, host_per_call=2e-5) for k, m in
         (("cyctc", 1e-3), ("torch-native", 3e-3), ("cyctc-allT", 1e-3), ("torch-cudnn", 2.5e-3))}
    table = bench_gpu.format_table([dict(shape="s", B=1, T=2, C=3, L=1, grad=g)])
    row = table.splitlines()[2]
    assert row == "| s (1, 2, 3, 1) | 1.000 | n/a | 3.000 | 1.000 | 2.500 | 3.00x | 2.50x | 20 |"


# ---------------------------------------------------------------------------------------------------------------
# gpu_check.sh

def test_script_parses():
    subprocess.run(["bash", "-n", SCRIPT], check=True)


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", SCRIPT], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


FAKE_PYTHON = r"""#!/usr/bin/env bash
# stand-in python3 for gpu_check.sh: pip, pytest, setup.py and the benchmark obey FAKE_* variables (FAKE_*_SLEEP: hang
# that long first); the module probe obeys FAKE_HAS_TIMEOUT; other inline scripts run on the real interpreter.
echo "fake-python $*" >> "$FAKE_CALLS"
case "$1" in
  -m)
    case "$2" in
      pip) exit "${FAKE_PIP_RC:-0}" ;;
      pytest)
        if [ -n "${FAKE_REAL_PYTEST:-}" ]; then  # the real pytest, with the script's options, on this file instead
          args=(); for a in "${@:2}"; do case "$a" in *.py) ;; *) args+=("$a") ;; esac; done
          exec "$REAL_PY" -m "${args[@]}" "$FAKE_REAL_PYTEST"
        fi
        sleep "${FAKE_PYTEST_SLEEP:-0}"
        for a in "$@"; do case "$a" in --junitxml=*) x=${a#--junitxml=} ;; esac; done
        printf '<testsuites><testsuite tests="%s" skipped="%s"/></testsuites>' "${FAKE_TESTS:-3}" \
          "${FAKE_SKIPPED:-0}" > "$x"
        exit "${FAKE_PYTEST_RC:-0}" ;;
    esac ;;
  -c) exit "${FAKE_IMPORT_RC:-0}" ;;
  -) [ "${2:-}" = pytest_timeout ] && exit $((1 - ${FAKE_HAS_TIMEOUT:-0}))
     exec "$REAL_PY" "$@" ;;
  setup.py) exit "${FAKE_SETUP_RC:-1}" ;;
  */bench_gpu.py) sleep "${FAKE_BENCH_SLEEP:-0}"; exit "${FAKE_BENCH_RC:-0}" ;;
esac
exit 99
"""


def _check_env(tmp_path, **env):
    """Environment for gpu_check.sh with the stand-in python3; its calls are logged in tmp_path/calls."""
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return dict(os.environ, **dict(dict(PYTHON=str(fake), OUT=str(tmp_path / "out"), REAL_PY=sys.executable,
                                        FAKE_CALLS=str(tmp_path / "calls"), GPU_CHECK_SHAPES="tiny ocr"), **env))


def _run_check(tmp_path, args=(), timeout=120, **env):
    r = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=_check_env(tmp_path, **env),
                       timeout=timeout)
    logs = list((tmp_path / "out").glob("gpu_check_*.log"))
    assert len(logs) == 1, r.stdout + r.stderr
    return r, logs[0].read_text(), (tmp_path / "calls").read_text()


@pytest.mark.parametrize("env, status, says", [
    ({}, 0, "GPU tests: passed"),
    ({"FAKE_PYTEST_RC": "1"}, 1, "GPU tests: FAILED"),
    ({"FAKE_SKIPPED": "3"}, 1, "no GPU test ran"),
    ({"FAKE_BENCH_RC": "1"}, 3, "benchmark: FAILED (status 1)"),
    ({"FAKE_BENCH_RC": "2"}, 3, "benchmark: FAILED: nothing measured"),
    ({"FAKE_PYTEST_RC": "1", "FAKE_BENCH_RC": "1"}, 1, "benchmark: FAILED"),
    ({"FAKE_PIP_RC": "1"}, 2, "cyctc is not importable"),
    ({"FAKE_PIP_RC": "1", "FAKE_SETUP_RC": "0"}, 0, "building a private in-place copy"),
    ({"FAKE_IMPORT_RC": "1"}, 2, "cyctc is not importable"),
])
def test_script_phases_and_exit_status(tmp_path, env, status, says):
    r, log, made = _run_check(tmp_path, **env)
    assert r.returncode == status, r.stdout + r.stderr
    assert says in r.stdout and says in log
    assert "benchmark: done" not in r.stdout or status in (0, 1) and "FAKE_BENCH_RC" not in env
    if status != 2:
        assert "-m pytest -m gpu" in made and "test_gpu.py" in made and "test_bench_gpu.py" not in made
        assert "bench_gpu.py --json" in made and "--shapes tiny ocr" in made and str(tmp_path / "out") in made
    assert "--no-build-isolation --no-deps --no-index ." in made
    if "FAKE_SETUP_RC" in env:  # the fallback builds with setup.py alone, from a copy without pyproject.toml
        assert "setup.py build_ext --inplace" in made and "without pyproject.toml" in r.stdout


@pytest.mark.parametrize("args, mode, total", [((), "full", 480), (("--quick",), "quick", 240)])
def test_quick_and_full_checks(tmp_path, args, mode, total):
    """--quick: the GPU tests, then the benchmark's quick shapes; both modes end within their limits: 8 and 4
    minutes, so that one device command (600 s) holds the full check and 15 minutes of device time, start-up
    included, hold --quick twice."""
    r, log, made = _run_check(tmp_path, args, GPU_CHECK_SHAPES="")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{mode} check: at most {total} s" in log
    bench = next(line for line in made.splitlines() if "benchmarks/bench_gpu.py" in line)
    assert ("--quick" in bench.split()) == (mode == "quick") and "--shapes" not in bench
    assert f"bench_gpu_{mode}_" in bench
    assert "-m pytest -m gpu" in made  # the GPU tests run in both
    budget = float(bench.split("--budget-s ")[1].split()[0])
    assert 5 <= budget <= total - 50
    assert total <= (8 if mode == "full" else 4) * 60


@pytest.mark.parametrize("args, env, says", [
    (("--fast",), {}, "unknown argument: --fast"),
    ((), {"GPU_CHECK_TOTAL_S": "4min"}, "GPU_CHECK_TOTAL_S must be a positive whole number of seconds, got '4min'"),
    (("--quick",), {"GPU_CHECK_TEST_TIMEOUT_S": "0"}, "GPU_CHECK_TEST_TIMEOUT_S must be a positive whole number"),
])
def test_bad_arguments_are_named(tmp_path, args, env, says):
    r = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=_check_env(tmp_path, **env),
                       timeout=60)
    assert r.returncode == 64 and says in r.stderr, r.stderr
    assert not (tmp_path / "calls").exists()  # nothing ran


def test_quick_check_fits_twice_in_the_device_time():
    """gpu_check.sh's defaults against the GPU machine's limits (issue 20): 10 minutes a command, 15 minutes in all
    with about 3 minutes of start-up: the full check in one command, --quick twice (a rerun) with the start-up."""
    text = open(SCRIPT).read()
    quick = int(text.split("total_s=${GPU_CHECK_TOTAL_S:-")[1].split("}")[0])
    full = int(text.split("total_s=${GPU_CHECK_TOTAL_S:-")[2].split("}")[0])
    assert quick == 240 and full == 480
    assert full <= 600 and 2 * quick + 180 <= 900 and full + 180 <= 900


@pytest.mark.parametrize("has_timeout", [True, False])
def test_per_test_timeout_when_pytest_timeout_is_installed(tmp_path, has_timeout):
    r, log, made = _run_check(tmp_path, FAKE_HAS_TIMEOUT=str(int(has_timeout)), GPU_CHECK_TEST_TIMEOUT_S="42")
    assert r.returncode == 0, r.stdout + r.stderr
    pytest_call = next(line for line in made.splitlines() if "-m pytest" in line)
    assert ("-p timeout --timeout=42" in pytest_call) == has_timeout
    assert "-o faulthandler_timeout=47" in pytest_call and " -v " in pytest_call
    assert ("per-test limit: 42 s (pytest-timeout)" in log) == has_timeout


HANGING_TESTS = """
import time
import pytest
pytestmark = getattr(pytest.mark, "gpu")  # (spelled so that gpu_check.sh's search skips this file)
def test_hangs():
    time.sleep(1000)
def test_after_the_hang():
    pass
"""


def test_a_hanging_test_does_not_hide_the_others(tmp_path):
    """The real pytest with gpu_check.sh's own options and pytest-timeout: the hanging test fails after the per-test
    limit, the next one still runs, and the JUnit report holds both."""
    pytest.importorskip("pytest_timeout", reason="pytest-timeout is not installed (the test extra has it)")
    tests = tmp_path / "test_hanging.py"
    tests.write_text(HANGING_TESTS)
    t0 = time.monotonic()
    r, log, made = _run_check(tmp_path, timeout=120, FAKE_HAS_TIMEOUT="1", FAKE_REAL_PYTEST=str(tests),
                              GPU_CHECK_TEST_TIMEOUT_S="3")
    assert time.monotonic() - t0 < 60
    assert r.returncode == 1 and "GPU tests: FAILED (pytest status 1)" in log, log[-4000:]
    assert re.search(r"test_hangs FAILED", log) and re.search(r"test_after_the_hang PASSED", log), log[-4000:]
    assert "Timeout" in log
    junit, = (tmp_path / "out").glob("pytest_gpu_*.xml")
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")


SLOW_TESTS = """
import time
import pytest
pytestmark = getattr(pytest.mark, "gpu")  # (spelled so that gpu_check.sh's search skips this file)
@pytest.mark.parametrize("i", range(20))
def test_slow(i):
    time.sleep(1)
"""


def test_a_phase_timeout_keeps_the_report_of_the_tests_that_ran(tmp_path):
    """Without pytest-timeout, the phase's own limit stops the real pytest with SIGINT: the JUnit report and the
    log still name the tests that ran before it."""
    tests = tmp_path / "test_slow.py"
    tests.write_text(SLOW_TESTS)
    r, log, made = _run_check(tmp_path, timeout=120, FAKE_HAS_TIMEOUT="0", FAKE_REAL_PYTEST=str(tests),
                              GPU_CHECK_TEST_S="6")
    assert r.returncode == 1 and "gpu_check: timed out after 6 s" in log, log[-4000:]
    assert "test_slow[0] PASSED" in log and "KeyboardInterrupt" in log
    junit, = (tmp_path / "out").glob("pytest_gpu_*.xml")
    suite = ET.parse(junit).getroot().find("testsuite")
    assert 1 <= int(suite.get("tests")) < 20 and suite.get("failures") == "0", ET.tostring(suite)[:500]


def test_hanging_phases_end_within_the_total_time(tmp_path):
    """GPU tests and the benchmark that never end: each is killed before the deadline, and the summary still comes."""
    t0 = time.monotonic()
    r, log, made = _run_check(tmp_path, timeout=60, GPU_CHECK_TOTAL_S="20", FAKE_PYTEST_SLEEP="1000",
                              FAKE_BENCH_SLEEP="1000")
    took = time.monotonic() - t0
    assert took <= 20 + 3, took
    assert r.returncode == 1, r.stdout + r.stderr
    assert "gpu_check: timed out after" in log and "GPU tests: FAILED (pytest status 124)" in log
    assert "benchmark: FAILED" in log and "exit status 1" in log


def test_summary_is_in_the_log_when_the_script_returns(tmp_path):
    """tee is waited for: with a tee that is slow to start, the log and the output hold the summary the moment the
    script's process ends (not only once its output pipe closes)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    slow_tee = bindir / "tee"
    slow_tee.write_text(f"#!/bin/sh\nsleep 2\nexec {shutil.which('tee')} \"$@\"\n")
    slow_tee.chmod(0o755)
    env = _check_env(tmp_path, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with open(tmp_path / "stdout", "w") as out:
        p = subprocess.Popen(["bash", SCRIPT], stdout=out, stderr=subprocess.STDOUT, env=env)
        assert p.wait(timeout=120) == 0
        log, = (tmp_path / "out").glob("gpu_check_*.log")
        assert "exit status 0" in log.read_text()
        assert "exit status 0" in (tmp_path / "stdout").read_text()


def test_results_json_and_logs_may_be_committed():
    """gpu_check.sh's JSON and logs under benchmarks/results/ are what the GPU-run issue commits; JUnit XML is not."""
    if subprocess.run(["git", "-C", ROOT, "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout (an unpacked sdist has no .gitignore rules to check)")

    def ignored(name):
        return subprocess.run(["git", "-C", ROOT, "check-ignore", "-q", f"benchmarks/results/{name}"]).returncode == 0
    assert not ignored("bench_gpu_quick_20261204T120000Z.json") and not ignored("gpu_check_20261204T120000Z.log")
    assert ignored("pytest_gpu_20261204T120000Z.xml")


def _bundled_old_setuptools():
    """The setuptools wheel this Python's ensurepip bundles, when older than 77 (3.11 and before: 65.5), else None."""
    import ensurepip

    for wheel in glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "setuptools-*.whl")):
        if int(os.path.basename(wheel).split("-")[1].split(".")[0]) < 77:
            return wheel
    return None


@pytest.mark.slow
def test_install_with_old_setuptools_and_no_network(tmp_path):
    """The GPU machine's situation: a setuptools older than 77, which rejects pyproject.toml's PEP 639 license, and no
    network. A virtual environment gets the setuptools this Python bundles (65.5 on 3.11; numpy, Cython, pytest and
    CuPy seen from this environment's site-packages, behind it), pip's index is off and every proxy points nowhere:
    gpu_check.sh --quick must still make cyctc importable (pip fails on the license; the fallback builds a copy
    without pyproject.toml with the old setuptools) and run its later phases, which with no device here fail as
    they should."""
    wheel = _bundled_old_setuptools()
    if wheel is None:
        pytest.skip(f"Python {sys.version.split()[0]} bundles no setuptools older than 77 to simulate the device with")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300,
                   env=dict(os.environ, PIP_NO_INDEX="1"))
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--force-reinstall", "--no-deps", wheel],
                   check=True, timeout=300, capture_output=True)
    site_dir = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    # this environment's packages (numpy, Cython, pytest, cupy...), after the venv's own (its old setuptools first)
    import site
    outer = [p for p in dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"]])
             if os.path.isdir(p) and os.path.realpath(p) != os.path.realpath(site_dir)]
    with open(os.path.join(site_dir, "zz_outer_site.pth"), "w") as f:
        f.write("\n".join(outer) + "\n")
    probe = subprocess.run([py, "-c", "import setuptools, numpy, Cython, pytest; print(setuptools.__version__)"],
                           capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                if k != "PYTHONPATH"})
    assert probe.returncode == 0, probe.stderr
    assert int(probe.stdout.split(".")[0]) < 77, probe.stdout

    nowhere = "http://127.0.0.1:9"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")}
    (tmp_path / "t").mkdir()
    env.update(PYTHON=py, OUT=str(tmp_path / "out"), TMPDIR=str(tmp_path / "t"), PIP_NO_INDEX="1",
               http_proxy=nowhere, https_proxy=nowhere, HTTP_PROXY=nowhere, HTTPS_PROXY=nowhere,
               GPU_CHECK_SHAPES="tiny")
    r = subprocess.run(["bash", SCRIPT, "--quick"], capture_output=True, text=True, env=env, timeout=600)
    log, = (tmp_path / "out").glob("gpu_check_*.log")
    text = log.read_text()
    assert r.returncode != 2, text[-6000:]
    assert "project.license" in text  # pip met the device's failure: setuptools < 77 and the PEP 639 license
    assert "building a private in-place copy without pyproject.toml" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("cyctc 0.1.0 from "))
    assert line.split(" from ")[1].startswith(str(tmp_path / "t" / "cyctc_gpu_check.")), line
    if not _backend.available():  # no device: the GPU tests all skip and the benchmark measures nothing
        assert r.returncode == 1 and "no GPU test ran" in text, text[-6000:]
        assert "FAILED: nothing measured" in text and "benchmark: done" not in text
    assert f"exit status {r.returncode}" in text
