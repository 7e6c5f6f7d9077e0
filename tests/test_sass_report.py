"""benchmarks/sass_report.py: the SASS parser and loop counter, and the targets of the chain kernels' per-frame loop.

* The parser on hand-written SASS (no toolchain): markers, unrolled copies, the back edge, inner loops, out-of-line
  code, unbalanced markers, ptxas's -v report, template arguments.
* The parser on a small synthetic kernel compiled with NVRTC and disassembled with cuobjdump: known loads, shuffles,
  copies and spills; a planted generic load is seen.
* ctc.cu itself: every chain kernel whose name has a K template argument (the third generation,
  ``cyctc_chain<T, K>``) keeps no generic loads or stores in its per-frame loop and no spills, and does not creep
  past the instruction counts and registers it measures today. Issue 20's instruction target (at most 24
  instructions per state per frame) is met by the float chains of one tile (K = 8; the average of its four loop
  copies: forward and backward, one-warp and multi-warp chains): 23.9 static instructions per state, asserted
  here against the target itself; double (K = 4) measures 57.3. Its register target (at most 64) is NOT met:
  96 / 105 registers (no spills, within the 128 of the kernel's launch bound; at 64 ptxas spills 296 bytes). The
  third generation landed with 43 / 83 instructions and 106 / 120 registers. The tiled instantiation (labels over
  2047 float / 1023 double, and every memory-budget plan) also holds the budget plans' own probability
  computation (exp, log) and checkpoint copies in its loop: 169.1 / 440.4 static instructions per state, 156 / 166
  registers (168 allowed at 384 threads). benchmarks/results/sass_gen3_2026-12-05c.json holds these figures,
  sass_gen3_2026-12-05b.json the previous ones (27.9 / 177.5 / 67.2 / 461.6), sass_gen3_2026-12-04.json the
  landed ones, sass_gen2_2026-12-04.json the second generation's (about 480-560 per state).

The toolchain tests need NVRTC (cupy + nvidia-cuda-nvrtc) and cuobjdump (nvidia-cuda-cuobjdump, with
nvidia-cuda-nvdisasm): they skip without them, and fail under CI (conftest.toolchain_unavailable).
"""

import os
import sys

import pytest

from conftest import toolchain_unavailable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import sass_report as sr  # noqa: E402

from cyctc.cuda import _backend  # noqa: E402

# issue 20, item 3's targets for the third generation's per-frame loop (the registers' is not met: see the module
# docstring)
TARGET_INSTR_PER_STATE = 24
TARGET_REGISTERS = 64
# what the third generation measures today (sm_90, NVRTC 13.0: 23.9, 169.1, 57.3, 440.4), plus a little: a ceiling
# against creep (it landed with 43, 186, 83 and 466); the float chains of one tile are held to the target itself
LANDED_INSTR_PER_STATE = {"cyctc_chain<float, 8, false>": TARGET_INSTR_PER_STATE, "cyctc_chain<float, 8, true>": 172,
                          "cyctc_chain<double, 4, false>": 59, "cyctc_chain<double, 4, true>": 450}
# and its registers today (96, 156, 105, 166), plus a few
LANDED_REGISTERS = {"cyctc_chain<float, 8, false>": 100, "cyctc_chain<float, 8, true>": 164,
                    "cyctc_chain<double, 4, false>": 108, "cyctc_chain<double, 4, true>": 168}
# what the kernel's __launch_bounds__(TILED ? 384 : 512, 1) allows: 65536 registers over the block's threads
MAX_REGISTERS = {"false": 128, "true": 168}

# ---------------------------------------------------------------------------------------------------------------
# Hand-written SASS


def _sass(lines, name="k"):
    out = ["", "\tcode for sm_90", f"\t\tFunction : {name}", '\t.headerflags\t@"EF_CUDA_SM90"']
    for i, text in enumerate(lines):
        out.append(f"        /*{16 * i:04x}*/                   {text} ;      /* 0x0000000000000000 */")
        out.append("                                                          /* 0x000fe20000000800 */")
    return "\n".join(out) + "\n"


# two unrolled copies, a remainder copy, an inner loop in the first copy, a divergence fall-back out of line
LOOP = [
    "MOV R0, RZ",                 # 0x00
    "ISETP.NE.AND P1, PT, R0, RZ, PT",  # 0x10  loop head, before the marker: back edge
    "PMTRIG 0x2",                 # 0x20
    "LDG.E R2, desc[UR4][R4.64]",  # 0x30
    "LD.E R3, desc[UR4][R6.64]",   # 0x40  generic load
    "FFMA R5, R2, R3, R5",         # 0x50  inner loop body
    "@P0 BRA 0x50",                # 0x60  inner loop back edge
    "BRA.DIV UR4, 0x1a0",          # 0x70  out of line
    "SHFL.UP PT, R8, R5, 0x1, RZ",  # 0x80
    "PMTRIG 0x4",                  # 0x90
    "PMTRIG 0x2",                  # 0xa0
    "DADD R10, R10, R12",          # 0xb0
    "ST.E desc[UR4][R6.64], R5",   # 0xc0  generic store
    "BAR.SYNC.DEFER_BLOCKING 0x0",  # 0xd0
    "PMTRIG 0x4",                  # 0xe0
    "IADD3 R0, R0, 0x2, RZ",       # 0xf0  back edge
    "@P1 BRA 0x10",                # 0x100 back edge
    "PMTRIG 0x2",                  # 0x110 remainder copy
    "STS [R1], R5",                # 0x120
    "PMTRIG 0x4",                  # 0x130
    "@P2 BRA 0x110",               # 0x140 remainder back edge
    "EXIT",                        # 0x150
    "NOP", "NOP",                  # 0x160, 0x170
    "NOP",                         # 0x180
    "NOP",                         # 0x190
    "WARPSYNC.COLLECTIVE R30, 0x1c0",  # 0x1a0
    "SHFL.UP PT, R8, R5, 0x1, RZ",  # 0x1b0
    "BRA 0x80",                    # 0x1c0
    "BRA 0x1d0",                   # 0x1d0 the function's tail
    "NOP",                         # 0x1e0
]


def test_parse_and_count_hand_written_loop():
    funcs = sr.parse_sass(_sass(LOOP))
    ins = funcs["k"]
    assert len(ins) == len(LOOP) and ins[6].pred == "P0" and ins[6].op == "BRA" and ins[4].base == "LD"
    r = sr.analyse_function(ins, K=2)
    assert r["copies"] == 3
    assert r["instructions_per_copy"] == [6, 3, 1]  # the PMTRIG markers excluded
    assert r["instr_per_frame"] == pytest.approx(10 / 3)
    # main loop 0x10-0x100: the head before the marker, the counter update, the branch; remainder: its branch
    assert [(d["start"], d["branch"], d["copies"], d["back_edge_instructions"]) for d in r["loops"]] == [
        ("0x10", "0x100", 2, 3), ("0x110", "0x140", 1, 1)]
    assert r["back_edge_per_frame"] == pytest.approx(4 / 3)
    assert r["instr_per_state"] == pytest.approx((10 / 3 + 4 / 3) / 2)
    pf = r["per_frame"]
    assert pf["generic_ld"] * 3 == 1 and pf["generic_st"] * 3 == 1 and pf["generic"] * 3 == 2
    assert pf["ldg"] * 3 == 1 and pf["sts"] * 3 == 1 and pf["shfl"] * 3 == 1 and pf["bar"] * 3 == 1
    assert pf["fp64"] * 3 == 1 and pf["branches"] * 3 == 2
    assert r["inner_loops"] == [dict(start="0x50", branch="0x60", instructions=2)]
    assert r["instr_per_frame_without_inner_loops"] == pytest.approx(8 / 3)
    (ool,) = r["out_of_line"]
    assert ool["target"] == "0x1a0" and ool["instructions"] == 3 and ool["returns_into_body"]
    # the whole kernel without its tail (the branch to itself and the padding after it)
    assert r["whole_kernel"]["instructions"] == len(LOOP) - 2 - 6  # 6 PMTRIG


def test_unbalanced_or_missing_markers_are_errors():
    with pytest.raises(sr.MarkerError, match="before any opening"):
        sr.analyse_function(sr.parse_sass(_sass(["PMTRIG 0x4", "PMTRIG 0x2", "EXIT"]))["k"])
    with pytest.raises(sr.MarkerError, match="never closed"):
        sr.analyse_function(sr.parse_sass(_sass(["PMTRIG 0x2", "NOP", "EXIT"]))["k"])
    with pytest.raises(sr.MarkerError, match="no CYCTC_MARK markers"):
        sr.analyse_function(sr.parse_sass(_sass(["NOP", "EXIT"]))["k"])
    assert sr.analyse_function(sr.parse_sass(_sass(["NOP", "EXIT"]))["k"], require_markers=False) is None
    with pytest.raises(sr.MarkerError, match="unexpected PMTRIG"):
        sr.analyse_function(sr.parse_sass(_sass(["PMTRIG 0x8", "EXIT"]))["k"])


def test_ptxas_log():
    log = """ptxas info    : 24 bytes gmem
ptxas info    : Compiling entry function '_Z1kIfEvPT_' for 'sm_90'
ptxas info    : Function properties for _Z1kIfEvPT_
ptxas         .     16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 768 bytes smem
ptxas info    : Compiling entry function 'plain' for 'sm_90'
ptxas info    : Function properties for plain
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers
"""
    r = sr.parse_ptxas_log(log)
    assert r["_Z1kIfEvPT_"] == dict(registers=40, spill_stores=8, spill_loads=12, stack_frame=16, static_shared=768,
                                    barriers=1)
    assert r["plain"] == dict(registers=8, spill_stores=0, spill_loads=0, stack_frame=0, static_shared=0, barriers=0)


def test_template_arguments():
    assert sr.template_args("cyctc_chain<float>") == ["float"]
    assert sr.template_args("cyctc_chain<float, 8>") == ["float", "8"]
    assert sr.template_args("k<Foo<int, 2>, 4>") == ["Foo<int, 2>", "4"]
    assert sr.template_args("cyctc_greedy_collapse") == []
    assert sr.states_per_thread("cyctc_chain<double, 4>") == 4
    assert sr.states_per_thread("cyctc_chain<float>") == 1
    assert sr.has_k_argument("cyctc_chain<float, 8>") and not sr.has_k_argument("cyctc_chain<float>")
    assert sr.is_chain_kernel("cyctc_chain<float, 8>") and not sr.is_chain_kernel("cyctc_rows<float>")
    with pytest.raises(ValueError):
        sr.states_per_thread("cyctc_chain<float, K>")


def test_missing_cuobjdump_fails_loudly(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CYCTC_CUOBJDUMP", str(tmp_path / "no-such-cuobjdump"))
    assert sr.find_tool("cuobjdump") is None
    with pytest.raises(sr.ToolError, match="cuobjdump not found"):
        sr.disassemble(b"\x7fELF")
    assert sr.main([]) == sr.EXIT_TOOLS  # NVRTC missing or cuobjdump missing: either way a tool error
    err = capsys.readouterr().err
    assert "sass_report: error:" in err and ("cuobjdump" in err or "NVRTC" in err)


# ---------------------------------------------------------------------------------------------------------------
# NVRTC + cuobjdump

def _toolchain():
    try:
        _backend.load_nvrtc()
    except Exception as e:
        toolchain_unavailable("the SASS report tests", f"NVRTC not available ({e})")
    if sr.find_tool("cuobjdump") is None:
        toolchain_unavailable("the SASS report tests", "cuobjdump not found: pip install nvidia-cuda-cuobjdump "
                                                       "nvidia-cuda-nvdisasm")


SYNTH = r"""
#if defined(CYCTC_SASS_MARKERS) && defined(__CUDA_ARCH__)
#define SYN_MARK(n) asm volatile("pmevent " #n ";")
#else
#define SYN_MARK(n)
#endif
#ifndef SYN_MIN_BLOCKS
#define SYN_MIN_BLOCKS 1
#endif
// K values per thread; a frame loop of n steps, unrolled UNROLL times: per frame one shuffle and K global loads
template <typename T, int K, int UNROLL>
__global__ void __launch_bounds__(256, SYN_MIN_BLOCKS)
synth(const T* __restrict__ p, T* __restrict__ out, int n, int use_shared) {
  __shared__ T buf[256];
  buf[threadIdx.x] = p[threadIdx.x];
  __syncthreads();
  T v[K];
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = out[threadIdx.x * K + k];
#pragma unroll UNROLL
  for (int i = 0; i < n; ++i) {
    SYN_MARK(1);
    const T left = __shfl_up_sync(0xffffffffu, v[K - 1], 1);
#pragma unroll
    for (int k = K - 1; k > 0; --k) v[k] = v[k] * p[(long long)k * n + i] + v[k - 1];
    v[0] = v[0] * p[i] + left;
#ifdef SYN_PLANT
    const T* src = use_shared ? buf : p + n;  // the address space is known only at run time: a generic load
    v[0] += src[(threadIdx.x + i) & 255];
#endif
    SYN_MARK(2);
  }
#pragma unroll
  for (int k = 0; k < K; ++k) out[threadIdx.x * K + k] = v[k];
}
"""


def _synth(names, *options):
    _toolchain()
    rep = sr.analyse_source(SYNTH, names, "sm_90", options, "synth.cu", marked=lambda n: True, _backend=_backend)
    return {k["name"]: k for k in rep["kernels"]}


def test_synthetic_kernel_counts():
    ks = _synth(["synth<float, 4, 1>", "synth<float, 8, 4>"])
    one = ks["synth<float, 4, 1>"]
    lp = one["loop"]
    assert lp["K"] == 4 and lp["copies"] == 1 and lp["back_edge_found"]
    pf = lp["per_frame"]
    # per frame: K loads of p (global, read-only), one shuffle; nothing generic, shared, barrier or FP64
    assert pf["ldg"] == 4 and pf["shfl"] == 1
    assert pf["generic"] == pf["lds"] == pf["sts"] == pf["bar"] == pf["fp64"] == pf["ldl"] == pf["stl"] == 0
    assert 4 + 1 + 4 <= lp["instr_per_frame"] <= 40  # the loads, the shuffle, K FMAs at least
    assert lp["instr_per_state"] == pytest.approx(lp["instr_per_frame_with_back_edge"] / 4)
    assert one["registers"] is not None and 0 < one["registers"] <= 255 and one["spill_bytes"] == 0
    assert one["barriers"] == 1  # the __syncthreads before the loop
    unrolled = ks["synth<float, 8, 4>"]["loop"]
    # unrolled four times plus a remainder loop: five marked copies, two loops, 8 loads and 1 shuffle a frame
    assert unrolled["copies"] == 5 and len(unrolled["loops"]) == 2
    assert sorted(d["copies"] for d in unrolled["loops"]) == [1, 4]
    assert unrolled["per_frame"]["ldg"] == 8 and unrolled["per_frame"]["shfl"] == 1


def test_planted_generic_load_is_seen():
    base = _synth(["synth<float, 4, 1>"])["synth<float, 4, 1>"]["loop"]["per_frame"]
    planted = _synth(["synth<float, 4, 1>"], "-DSYN_PLANT")["synth<float, 4, 1>"]["loop"]["per_frame"]
    assert base["generic_ld"] == 0 and planted["generic_ld"] == 1 and planted["generic_st"] == 0
    assert planted["instructions"] > base["instructions"]


def test_spills_are_reported():
    k = _synth(["synth<float, 64, 1>"], "-DSYN_MIN_BLOCKS=8")["synth<float, 64, 1>"]  # 32 registers for 64 values
    assert k["registers"] <= 32 and k["spill_bytes"] > 0
    pf = k["loop"]["per_frame"]
    assert pf["ldl"] + pf["stl"] > 0


def test_markers_missing_from_ctc_exit_3(monkeypatch, capsys):
    _toolchain()
    source = _backend.kernel_source("ctc.cu")
    assert "CYCTC_MARK(1);" in source and "CYCTC_MARK(2);" in source
    bare = source.replace("CYCTC_MARK(1);", "").replace("CYCTC_MARK(2);", "")
    be = sr.backend()
    monkeypatch.setattr(be, "kernel_source", lambda s: bare if s == "ctc.cu" else source)
    assert sr.main(["--source", "ctc.cu"]) == sr.EXIT_MARKERS
    err = capsys.readouterr().err
    assert "sass_report: error:" in err and "no CYCTC_MARK markers" in err and "cyctc_chain" in err


@pytest.fixture(scope="module")
def ctc_report():
    _toolchain()
    rep = sr.analyse_source(_backend.kernel_source("ctc.cu"), _backend.name_expressions("ctc.cu"), "sm_90",
                            _backend=_backend)
    return {k["name"]: k for k in rep["kernels"]} | {"__sha256": rep["source_sha256"]}


GEN3 = [n for n in _backend.name_expressions("ctc.cu") if sr.is_chain_kernel(n) and sr.has_k_argument(n)]


@pytest.mark.parametrize("name", GEN3)
def test_third_generation_targets(ctc_report, name):
    """Issue 20, item 3: no generic loads or stores in the loop, no spills, registers within the launch bound, and
    instructions per state per frame (static, rare paths and back edge included) no more than today
    (LANDED_INSTR_PER_STATE: the issue's 24 for the float chains of one tile); registers above the issue's 64."""
    k = ctc_report[name]
    lp = k["loop"]
    assert lp is not None and lp["K"] == sr.states_per_thread(name) >= 2
    assert lp["instr_per_state"] <= LANDED_INSTR_PER_STATE[name], (name, lp["instr_per_frame"], lp["K"])
    assert lp["per_frame"]["generic"] == 0, (name, lp["per_frame"])
    assert k["registers"] <= MAX_REGISTERS[sr.template_args(name)[2]], (name, k["registers"])
    assert k["registers"] <= LANDED_REGISTERS[name], (name, k["registers"])
    assert k["spill_bytes"] == 0 and lp["per_frame"]["ldl"] == lp["per_frame"]["stl"] == 0, name
