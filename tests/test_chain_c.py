"""The chain alignment kernel (src/decode.c) as plain C99, on its own: identical results for every budget and the
budget error, under AddressSanitizer and UBSan where the compiler has them (the arena's layout checked)."""
import os
import shutil
import subprocess

import pytest

import cyctc

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc on PATH to compile the kernel")

HERE = os.path.dirname(os.path.abspath(__file__))


def _build(tmp, extra):
    src = os.path.join(os.path.dirname(cyctc.__file__), "src")
    exe = os.path.join(tmp, "chain_budgets" + ("_san" if extra else ""))
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-g", *extra, "-I", src,
                    os.path.join(HERE, "chain_budgets.c"), os.path.join(src, "decode.c"), "-o", exe, "-lm"],
                   check=True, capture_output=True, text=True)
    return exe


def test_chain_kernel_budgets_in_c(tmp_path):
    exe = _build(str(tmp_path), [])
    r = subprocess.run([exe], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        san = _build(str(tmp_path), ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                                     "-fno-omit-frame-pointer"])
    except subprocess.CalledProcessError:
        return  # no sanitizer runtime here: the plain build above is the check
    r = subprocess.run([san], capture_output=True, text=True, env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1"})
    assert r.returncode == 0, r.stdout + r.stderr
