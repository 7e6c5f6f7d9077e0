"""The build's OpenMP state: on wherever the compiler has it (CI demands it), off only in a build without it, which
then says so (at import and in show_config) and runs everything on one thread."""
import os
import re
import subprocess
import sys

import numpy as np

import cyctc
from cyctc import _cpu, _decode
from cyctc._threads import resolve_num_threads, usable_cores


OPENMP = _cpu.openmp_enabled()
# CYCTC_NO_OPENMP=1 builds without OpenMP; set when testing such a build, it says no OpenMP is expected
NO_OPENMP_ASKED = os.environ.get("CYCTC_NO_OPENMP", "") not in ("", "0")


def test_openmp_state():
    assert _decode.openmp_enabled() == OPENMP  # both extensions are built with the same flags
    if NO_OPENMP_ASKED:
        assert not OPENMP
    elif os.environ.get("CI"):
        # CI's compiler (gcc) has OpenMP: a build without it is a regression there
        assert OPENMP, "built without OpenMP"


def test_import_warns_exactly_when_built_without_openmp(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CYCTC_NO_OPENMP", "PYTHONWARNINGS")}
    run = [sys.executable, "-W", "default", "-c", "import cyctc"]
    err = subprocess.run(run, env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stderr
    assert ("RuntimeWarning: cyctc was built without OpenMP" in err) == (not OPENMP), err
    # CYCTC_NO_OPENMP=1 at run time: single-threaded is what the user wants, nothing to warn about
    err = subprocess.run(run, env=dict(env, CYCTC_NO_OPENMP="1"), cwd=tmp_path, capture_output=True, text=True,
                         check=True).stderr
    assert "OpenMP" not in err, err


def test_show_config_reports(capsys):
    cyctc.show_config()
    out = capsys.readouterr().out
    assert cyctc.__version__ in out
    assert ("OpenMP: on" if OPENMP else "OpenMP: off (built without OpenMP: single-threaded)") in out
    assert re.search(r"default num_threads: \d+", out)
    assert "backend cpu: available" in out and "backend cuda:" in out


def test_thread_rule():
    n = usable_cores()
    if not OPENMP:  # without OpenMP every call runs on one thread, whatever it asks for
        assert {resolve_num_threads(k) for k in (1, 5, -1, -n - 5, None)} == {1}
        return
    assert resolve_num_threads(1) == 1 and resolve_num_threads(5) == 5
    assert resolve_num_threads(-1) == n and resolve_num_threads(-n - 5) == 1
    assert 1 <= resolve_num_threads(None) <= n


def test_omp_num_threads_is_respected(tmp_path):
    code = "from cyctc._threads import resolve_num_threads; print(resolve_num_threads(None))"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, OMP_NUM_THREADS="1"),
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_installed_package_carries_sources_not_generated_c():
    pkg = os.path.dirname(cyctc.__file__)
    assert os.path.exists(os.path.join(pkg, "src", "ctc.c"))
    assert os.path.exists(os.path.join(pkg, "src", "ctc.h"))


def test_demo_runs_and_learns(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cyctc", "demo", "--epochs", "3", "--utterances", "128"],
                         cwd=tmp_path, capture_output=True, text=True, check=True, timeout=120).stdout
    losses = [float(m) for m in re.findall(r"train loss/label\s+([\d.]+)", out)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert "label error rate" in out
    assert np.isfinite(losses).all()


def test_an_unbuilt_source_tree_says_so(tmp_path):
    """README, Install: from the root of a checkout whose extensions were not built in place, `import cyctc` and
    `python -m cyctc` fail with one sentence naming the two ways out; from any other folder they work."""
    pkg = os.path.dirname(cyctc.__file__)
    tree = tmp_path / "checkout"
    (tree / "cyctc").mkdir(parents=True)
    (tree / "pyproject.toml").write_text("[project]\nname = 'cyctc'\n")
    for name in ("__init__.py", "__main__.py"):
        with open(os.path.join(pkg, name)) as f:
            (tree / "cyctc" / name).write_text(f.read())
    # -S: no site-packages, whose import hooks (an editable install of another checkout) could supply the
    # extensions; the folder in the current directory is what Python imports either way
    for argv in (["-c", "import cyctc"], ["-m", "cyctc", "config"]):
        r = subprocess.run([sys.executable, "-S", *argv], cwd=tree, capture_output=True, text=True)
        assert r.returncode != 0, r.stdout
        assert "have not been built" in r.stderr and "pip install -e ." in r.stderr, r.stderr
        assert r.stderr.count("ImportError: ") == 1 and "During handling" not in r.stderr, r.stderr  # not a chain
    r = subprocess.run([sys.executable, "-m", "cyctc", "config"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and f"cyctc {cyctc.__version__}" in r.stdout
