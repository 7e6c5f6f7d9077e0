"""benchmarks/bench_gpu.py and benchmarks/gpu_check.sh without a GPU.

bench_gpu.py's dry run goes through the same argument parsing, problem building, correctness checks, interleaved
timing, table and JSON code as a GPU run (numpy arrays, cyctc's CPU backend, host clock). gpu_check.sh is checked
with ``bash -n`` and shellcheck (when installed), and its control flow (phases, fallbacks, exit status) is run with
a stand-in ``python3`` whose pip / pytest / benchmark outcomes each test chooses.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
SCRIPT = os.path.join(BENCH, "gpu_check.sh")
sys.path.insert(0, BENCH)

import bench_gpu  # noqa: E402


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
# stand-in python3 for gpu_check.sh: pip, pytest, setup.py and the benchmark obey FAKE_* variables; inline
# scripts run on the real interpreter.
echo "fake-python $*" >> "$FAKE_CALLS"
case "$1" in
  -m)
    case "$2" in
      pip) exit "${FAKE_PIP_RC:-0}" ;;
      pytest)
        for a in "$@"; do case "$a" in --junitxml=*) x=${a#--junitxml=} ;; esac; done
        printf '<testsuites><testsuite tests="%s" skipped="%s"/></testsuites>' "${FAKE_TESTS:-3}" \
          "${FAKE_SKIPPED:-0}" > "$x"
        exit "${FAKE_PYTEST_RC:-0}" ;;
    esac ;;
  -c) exit "${FAKE_IMPORT_RC:-0}" ;;
  -) exec "$REAL_PY" "$@" ;;
  setup.py) exit "${FAKE_SETUP_RC:-1}" ;;
  */bench_gpu.py) exit "${FAKE_BENCH_RC:-0}" ;;
esac
exit 99
"""


@pytest.mark.parametrize("env, status, says", [
    ({}, 0, "GPU tests: passed"),
    ({"FAKE_PYTEST_RC": "1"}, 1, "GPU tests: FAILED"),
    ({"FAKE_SKIPPED": "3"}, 1, "no GPU test ran"),
    ({"FAKE_BENCH_RC": "1"}, 3, "benchmark: FAILED"),
    ({"FAKE_PYTEST_RC": "1", "FAKE_BENCH_RC": "1"}, 1, "benchmark: FAILED"),
    ({"FAKE_PIP_RC": "1"}, 2, "cyctc is not importable"),
    ({"FAKE_PIP_RC": "1", "FAKE_SETUP_RC": "0"}, 0, "building a private in-place copy"),
    ({"FAKE_IMPORT_RC": "1"}, 2, "cyctc is not importable"),
])
def test_script_phases_and_exit_status(tmp_path, env, status, says):
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out = tmp_path / "out"
    calls = tmp_path / "calls"
    e = dict(os.environ, PYTHON=str(fake), OUT=str(out), REAL_PY=sys.executable, FAKE_CALLS=str(calls),
             GPU_CHECK_SHAPES="tiny ocr", **env)
    r = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, env=e, timeout=120)
    assert r.returncode == status, r.stdout + r.stderr
    assert says in r.stdout
    logs = list(out.glob("gpu_check_*.log"))
    assert len(logs) == 1 and says in logs[0].read_text()
    made = calls.read_text()
    if status != 2:
        assert "-m pytest -m gpu" in made and "test_gpu.py" in made
        assert "bench_gpu.py --json" in made and "--shapes tiny ocr" in made and str(out) in made
    assert "--no-build-isolation --no-deps --no-index ." in made
