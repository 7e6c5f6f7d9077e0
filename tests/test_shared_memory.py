"""The chain kernel's shared memory: the launch plans never ask for more than a launch may use.

A launch gets 48 KiB of shared memory without opting in, static (the kernel's own ``__shared__`` variables) and
dynamic (what the launch asks for) together. ``cyctc_chain`` asks for dynamic shared memory only for chains longer
than one warp: a boundary slot (main and shadow value and exponent) per warp of each tile and frame parity. Labels
whose slots do not fit are refused with a ValueError before anything is launched. On a device the glue takes the
limit from the compiled kernel's own attributes; without one (emulation, cost model) from ``_backend.STATIC_SHARED``,
which is checked here against what ptxas reports for the kernel NVRTC compiles (no GPU needed). (Second generation:
a wrong static size, 512 B in the table against ptxas's 768 B, made launches at float32 Lmax 1423-1429 fail.)
"""

import re

import numpy as np
import pytest

import fake_cupy
from conftest import toolchain_unavailable

from cyctc.cuda import _backend

# (dtype, the longest label whose boundary slots still fit): tiles of 384 threads of K states (8 float, 4 double),
# 2 parities x 12 warps x (2 values + 2 int exponents) a tile, within 48 KiB less the static 544 / 928 bytes
LAST_IN_SHARED = {"float32": 193535, "float64": 63743}
ARCHS = ("sm_80", "sm_90", "sm_100", "sm_120")


def ptxas_static_shared(arch):
    """{kernel name expression: static shared bytes} for ctc.cu, from ptxas's ``-v`` report through NVRTC."""
    try:
        nvrtc = _backend.load_nvrtc()
    except Exception as e:  # cupy missing, or no libnvrtc
        toolchain_unavailable("the shared-memory table check", f"NVRTC not available ({e})")
    names = _backend.name_expressions("ctc.cu")
    prog = nvrtc.createProgram(_backend.kernel_source("ctc.cu"), "ctc.cu", (), ())
    try:
        for n in names:
            nvrtc.addNameExpression(prog, n)
        nvrtc.compileProgram(prog, _backend.nvrtc_options(arch) + ("-Xptxas=-v",))
        log = nvrtc.getProgramLog(prog)
        lowered = {nvrtc.getLoweredName(prog, n): n for n in names}
    finally:
        nvrtc.destroyProgram(prog)
    out, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = lowered[m.group(1)]
        m = re.search(r"Used \d+ registers(.*)", line)
        if m:
            assert current is not None and current not in out, log
            smem = re.search(r"(\d+) bytes smem", m.group(1))
            out[current] = int(smem.group(1)) if smem else 0
    assert sorted(out) == sorted(names), log  # a report line for every kernel: the parse saw them all
    return out


def _supported(arch):
    try:
        archs = _backend.load_nvrtc().getSupportedArchs()
    except Exception:
        return True  # ptxas_static_shared says why NVRTC is missing
    return int(arch[3:]) in archs


@pytest.mark.parametrize("arch", ARCHS)
def test_static_shared_table_is_what_ptxas_reports(arch):
    if not _supported(arch):
        pytest.skip(f"this NVRTC cannot compile for {arch}")
    smem = ptxas_static_shared(arch)
    for dtype, ctype in _backend.CTYPES.items():
        for name in (f"cyctc_chain<{ctype}, {_backend.CHAIN_K[dtype]}, false>",
                     f"cyctc_chain<{ctype}, {_backend.CHAIN_K[dtype]}, true>"):
            assert smem[name] == _backend.STATIC_SHARED[dtype], (arch, smem)
        # the other kernels ask for no dynamic shared memory: their static part alone must fit
        assert all(v <= _backend.SHARED_LIMIT for v in smem.values())


def _chain(plan):
    return next(ln for ln in plan.launches if ln.kernel.startswith("cyctc_chain"))


def _slots_bytes(Lmax, dtype):
    """Boundary slots of a chain (K = 8 float, 4 double): one-warp chains none; up to 512 blocks one tile; beyond,
    tiles of 384 threads."""
    K, isz = (8, 4) if dtype == "float32" else (4, 8)
    blocks = -(-(2 * Lmax + 1) // K)
    if blocks <= 32:
        return 0
    nthr = min(512, -(-blocks // 32) * 32) if blocks <= 512 else 384
    return 2 * -(-blocks // nthr) * (nthr // 32) * (2 * isz + 8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("grad", [False, True], ids=["loss", "grad"])
def test_plans_at_the_boundary_lengths_fit_a_launch(dtype, grad):
    last = LAST_IN_SHARED[dtype]
    static = _backend.STATIC_SHARED[dtype]
    B, T, C = 2, 3, 5
    assert _slots_bytes(last, dtype) + static <= _backend.SHARED_LIMIT < _slots_bytes(last + 1, dtype) + static
    for Lmax in list(range(last - 3, last + 4)) + [1, 63, 64, 500, 5000]:
        args = dict(blank=0, merge_repeated=True, grad_strides=(T * C, C) if grad else None)
        if Lmax > last:
            with pytest.raises(ValueError, match=f"labels of {Lmax} are too long"):
                _backend.launch_config(B, T, C, Lmax, dtype, (T * C, C), **args)
            continue
        chain = _chain(_backend.launch_config(B, T, C, Lmax, dtype, (T * C, C), **args))
        assert chain.shared_bytes == _slots_bytes(Lmax, dtype) == _backend.chain_shared_bytes(2 * Lmax + 1, dtype)
        assert chain.shared_bytes + static <= _backend.SHARED_LIMIT


def test_dynamic_limit_from_attributes():
    assert _backend.dynamic_shared_limit(768, 48 * 1024 - 768) == 48 * 1024 - 768
    assert _backend.dynamic_shared_limit(768, 48 * 1024) == 48 * 1024 - 768  # never past 48 KiB in all
    assert _backend.dynamic_shared_limit(768, 1000) == 1000                    # the kernel's own maximum
    assert _backend.dynamic_shared_limit(64 * 1024, 0) == 0
    for dtype in ("float32", "float64"):
        assert _backend.table_dynamic_shared_limit(dtype) == _backend.SHARED_LIMIT - _backend.STATIC_SHARED[dtype]
    with pytest.raises(TypeError, match="float32 or float64"):
        _backend.table_dynamic_shared_limit("float16")
    with pytest.raises(ValueError, match="dynamic_shared_limit must be >= 0 bytes, got -1"):
        _backend.launch_config(1, 2, 3, 1, "float32", (6, 3), blank=0, merge_repeated=True, dynamic_shared_limit=-1)


@pytest.mark.parametrize("attrs, Lmax, fits", [
    ({}, LAST_IN_SHARED["float32"], True),                            # ptxas's own numbers
    ({}, LAST_IN_SHARED["float32"] + 1, False),
    ({"shared_size_bytes": 4096}, LAST_IN_SHARED["float32"], False),  # more static memory than the table says
    ({"shared_size_bytes": 0}, LAST_IN_SHARED["float32"] + 300, True),  # less: the room is used
    ({"max_dynamic_shared_size_bytes": 16 * 1024}, 70000, False),       # the kernel's own dynamic maximum
    ({"max_dynamic_shared_size_bytes": 16 * 1024}, 60000, True),
])
def test_device_glue_plans_with_the_compiled_kernels_attributes(monkeypatch, attrs, Lmax, fits):
    """ctc_loss_grad asks the compiled cyctc_chain for its shared-memory attributes (through the driver, as on a
    device) and plans with them: labels whose boundary slots exceed what the kernel allows are refused before any
    launch, and a launch never asks for more than the kernel allows."""
    cp = fake_cupy.install(monkeypatch)
    kernels = {}

    def get_function(device_id, source, name):
        if name not in kernels:
            kernels[name] = fake_cupy.Kernel(name, **(attrs if name.startswith("cyctc_chain") else {}))
        return kernels[name]
    monkeypatch.setattr(_backend, "get_function", get_function)
    B, T, C = 1, 4, 5
    x = cp.asarray(np.zeros((B, T, C), np.float32))
    labels = np.ones((B, Lmax), np.int32)
    name = "cyctc_chain<float, 8, true>" if -(-(2 * Lmax + 1) // 8) > 512 else "cyctc_chain<float, 8, false>"
    if not fits:
        with pytest.raises(ValueError, match="too long for the CUDA backend's shared memory"):
            _backend.ctc_loss_grad(x, labels, [Lmax], [T], 0, True, cp.empty((B, T, C), np.float32), None)
        assert all(not k.calls for k in kernels.values())  # nothing launched
        return
    _backend.ctc_loss_grad(x, labels, [Lmax], [T], 0, True, cp.empty((B, T, C), np.float32), None)
    (grid, block, args, shared_mem), = kernels[name].calls
    k = kernels[name]
    static, dynamic_max = k.attributes[1], k.attributes[8]
    assert shared_mem == _backend.chain_shared_bytes(2 * Lmax + 1, "float32") > 0
    assert shared_mem <= dynamic_max and shared_mem + static <= _backend.SHARED_LIMIT
