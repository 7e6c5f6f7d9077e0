"""benchmarks/bench_frameworks.py runs end to end on a tiny shape: every framework's pair is timed, and the bridge's
loss and gradient agree with the framework's own before timing."""
import json
import os
import subprocess
import sys

import pytest

from conftest import toolchain_unavailable

pytestmark = [pytest.mark.frameworks, pytest.mark.slow]

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "benchmarks", "bench_frameworks.py")


def test_bench_frameworks_smoke(tmp_path):
    if not os.path.isfile(SCRIPT):
        pytest.skip("benchmarks/ is not beside the tests")
    for mod, extra in (("torch", "torch"), ("jax", "jax"), ("optax", "jax"), ("tensorflow", "tf")):
        try:
            __import__(mod)
        except ImportError as e:
            toolchain_unavailable("the framework benchmark", f"{mod} not installed ({e}); pip install 'cyctc[{extra}]'")
    out = tmp_path / "fw.json"
    r = subprocess.run([sys.executable, SCRIPT, "--shapes", "tiny", "--rounds", "1", "--threads", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["failed"] == []
    assert sorted(x["framework"] for x in res["results"]) == ["jax", "keras", "tf", "torch"]
    for x in res["results"]:
        assert x["own_ms"] > 0 and x["cyctc_ms"] > 0
        assert x["check"]["loss_rel"] < 1e-4 and x["check"]["grad_rel"] < 1e-3, x
    assert "| torch" in r.stdout and "speed-up" in r.stdout
