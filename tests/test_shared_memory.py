"""The chain kernel's shared memory: the launch plans never ask for more than a launch may use.

A launch gets 48 KiB of shared memory without opting in, static (the kernel's own ``__shared__`` variables) and
dynamic (what the launch asks for) together. ``cyctc_chain`` keeps its rows in dynamic shared memory when they fit
and in a global workspace otherwise. On a device the glue takes the limit from the compiled kernel's own attributes;
without one (emulation, cost model) from ``_backend.STATIC_SHARED``, which is checked here against what ptxas reports
for the kernel NVRTC compiles (no GPU needed). The boundary lengths are those where a wrong static size (the 512 B
the table once held, against ptxas's 768 B for float and 1024 B for double) made launches fail: float32 Lmax 1423 to
1429, float64 707 to 714.
"""

import re

import numpy as np
import pytest

import fake_cupy
from conftest import toolchain_unavailable

from cyctc.cuda import _backend

# (dtype, the longest label whose chain rows still fit in shared memory): 4 * (4 S + 8 ceil(S / 32)) + 768 <= 48 KiB
# for float, 8 * (...) + 1024 <= 48 KiB for double, S = 2 Lmax + 1
LAST_IN_SHARED = {"float32": 1422, "float64": 706}
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
        assert smem[f"cyctc_chain<{ctype}>"] == _backend.STATIC_SHARED[dtype], (arch, smem)
        # the other kernels ask for no dynamic shared memory: their static part alone must fit
        assert all(v <= _backend.SHARED_LIMIT for v in smem.values())


def _chain(plan):
    return next(ln for ln in plan.launches if ln.kernel.startswith("cyctc_chain"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("grad", [False, True], ids=["loss", "grad"])
def test_plans_at_the_boundary_lengths_fit_a_launch(dtype, grad):
    last = LAST_IN_SHARED[dtype]
    static = _backend.STATIC_SHARED[dtype]
    B, T, C = 2, 3, 5
    for Lmax in range(last - 5, last + 10):  # covers float32 1423..1429 and float64 707..714
        plan = _backend.launch_config(B, T, C, Lmax, dtype, (T * C, C), blank=0, merge_repeated=True,
                                      grad_strides=(T * C, C) if grad else None)
        chain = _chain(plan)
        in_shared = chain.shared_bytes > 0
        assert in_shared == (Lmax <= last), (dtype, Lmax, chain.shared_bytes)
        if in_shared:
            assert chain.shared_bytes == _backend.chain_shared_bytes(2 * Lmax + 1, dtype)
            assert chain.shared_bytes + static <= _backend.SHARED_LIMIT
        else:
            assert _backend.chain_shared_bytes(2 * Lmax + 1, dtype) + static > _backend.SHARED_LIMIT
            work = dict((n, c) for n, _, c in plan.workspaces)["work"]
            assert work == (2 if grad else 1) * B * _backend._chain_work(2 * Lmax + 1)
        assert ("i32", int(in_shared)) == chain.args[-4]  # the kernel's use_shared argument says the same


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


@pytest.mark.parametrize("attrs, Lmax, in_shared", [
    ({}, LAST_IN_SHARED["float32"], True),                           # ptxas's own numbers
    ({}, LAST_IN_SHARED["float32"] + 1, False),
    ({"shared_size_bytes": 4096}, LAST_IN_SHARED["float32"], False),  # more static memory than the table says
    ({"shared_size_bytes": 0}, LAST_IN_SHARED["float32"] + 1, True),  # less: the room is used
    ({"max_dynamic_shared_size_bytes": 16 * 1024}, 600, False),      # the kernel's own dynamic maximum
    ({"max_dynamic_shared_size_bytes": 16 * 1024}, 480, True),
])
def test_device_glue_plans_with_the_compiled_kernels_attributes(monkeypatch, attrs, Lmax, in_shared):
    """ctc_loss_grad asks the compiled cyctc_chain for its shared-memory attributes (through the driver, as on a
    device) and plans with them: a kernel that needs more static memory than the table gets its rows in global
    memory, and the launch never asks for more than the kernel allows."""
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
    _backend.ctc_loss_grad(x, labels, [Lmax], [T], 0, True, cp.empty((B, T, C), np.float32), None)
    (grid, block, args, shared_mem), = kernels["cyctc_chain<float>"].calls
    need = _backend.chain_shared_bytes(2 * Lmax + 1, "float32")
    k = kernels["cyctc_chain<float>"]
    static, dynamic_max = k.attributes[1], k.attributes[8]
    assert (shared_mem > 0) == in_shared
    if in_shared:
        assert shared_mem == need and shared_mem <= dynamic_max and shared_mem + static <= _backend.SHARED_LIMIT
