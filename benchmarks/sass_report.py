#!/usr/bin/env python
"""SASS report of the CUDA kernels: the chain kernels' per-frame loop, counted from the disassembly.

    python benchmarks/sass_report.py [--arch sm_90] [--json out.json] [--source ctc.cu] [--all-kernels]

Compiles ``cyctc/cuda/<source>`` (``_backend.kernel_source``; the kernels of ``_backend.name_expressions``) with
NVRTC (``_backend.load_nvrtc()``, ``_backend.nvrtc_options(arch)`` + ``-DCYCTC_SASS_MARKERS -Xptxas=-v``) to a cubin,
disassembles it with ``cuobjdump -sass`` and reports per kernel: registers, spill bytes, stack frame and static
shared memory (ptxas's ``-v`` report in the NVRTC log), and for the chain kernels (``cyctc_chain<...>``) the
per-frame loop of the scaled path, found by its markers.

Markers. ``CYCTC_MARK(1)`` opens the per-frame loop body in ``ctc.cu``, ``CYCTC_MARK(2)`` closes it. Under
``-DCYCTC_SASS_MARKERS`` they are ``asm volatile("pmevent N;")``, which ptxas emits as ``PMTRIG (1 << N)``:
``PMTRIG 0x2`` opens, ``PMTRIG 0x4`` closes. Nothing else depends on code offsets.

How the loop is counted (static counts: every instruction once, whether or not a given frame executes it):

* A *copy* of the body is a run of opening markers followed by a run of closing markers, in address order
  (normally one ``PMTRIG 0x2`` ... ``PMTRIG 0x4`` pair). A loop unrolled U times has U copies (a remainder loop adds
  its own); the body of one frame is the average over the copies. A closing marker before any opening one, an
  opening marker never closed, or a chain kernel without markers is an error.
* ``instr/frame``: instructions strictly between a copy's first opening and last closing marker, the ``PMTRIG``
  markers themselves excluded, averaged over the copies. Everything between the markers counts: rare branches
  (flush handling, the first frame's barrier, the early exit) and inner loops (counted once, however many times they
  run), so for a body with rare paths this is an upper bound of what one frame executes, and for a body with an
  inner loop over tiles it is the cost of one pass with one tile plus the inner loop's body once.
* ``back edge``: the loop's own instructions outside the markers. The loop is the range from the target of the first
  backward branch after the last closing marker (a branch whose target is at or before the copy's opening marker) to
  that branch; its instructions that lie in no copy (counter updates, the branch itself, a loop head placed before
  the opening marker, glue between unrolled copies), divided by the copies it holds. ``instr/frame+be`` adds it.
* ``instr/state`` = ``(instr/frame + back edge) / K``, K the states each thread holds: the kernel name's second
  template argument (``cyctc_chain<float, 8>``: 8); 1 when there is none (``cyctc_chain<float>``, the second
  generation: one state per thread and tile).
* Opcode classes, per frame (between the markers, averaged over the copies): ``generic LD/ST`` are the generic-address
  ``LD`` / ``ST`` (and ``ATOM``) opcodes, whose memory space is decided at run time, as opposed to ``LDG``/``STG``
  (global), ``LDS``/``STS`` (shared), ``LDL``/``STL`` (local: spills); ``SHFL``; ``BAR`` (``BAR.SYNC``,
  ``BAR.RED``...); ``FP64``: the ``D*`` arithmetic (``DADD``, ``DMUL``, ``DFMA``, ``DSETP``, ``DMNMX``...), any opcode
  with ``.F64`` (conversions) and ``MUFU.*64H``; ``MUFU``: the special-function unit (FP32 transcendentals).
* Inner loops (a backward branch inside one copy) and out-of-line code (a branch from inside a copy to code outside
  the loop: divergence fall-backs of warp collectives, which branch back, and loop exits) are listed with their
  static sizes; they are not added to ``instr/frame``.

Exit status: 0 report written; 2 a tool is missing (NVRTC, cuobjdump) or compilation failed; 3 a chain kernel's
markers are missing or unbalanced. Also a library: :func:`analyse_source`, :func:`parse_sass`,
:func:`analyse_function`, :func:`parse_ptxas_log` (tests/test_sass_report.py).
"""

import argparse
import ctypes
import datetime
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

OPEN, CLOSE = 1, 2  # CYCTC_MARK(n) -> pmevent n -> PMTRIG (1 << n)
MARKER_DEFINE = "-DCYCTC_SASS_MARKERS"
EXIT_TOOLS, EXIT_MARKERS = 2, 3


class ToolError(RuntimeError):
    """NVRTC or cuobjdump missing, or compilation failed (exit status 2)."""


class MarkerError(RuntimeError):
    """Markers missing or unbalanced (exit status 3)."""


# ---------------------------------------------------------------------------------------------------------------
# Tools

def backend(installed=False):
    """``cyctc.cuda._backend``: by default the one of the checkout this file lives in (``cyctc/cuda/_backend.py``
    beside ``benchmarks/``, loaded from its file: it needs no compiled extension, and the report is then about this
    checkout's ``ctc.cu`` even where another copy of cyctc is installed); the installed package's when there is no
    such file or ``installed`` is True."""
    path = os.path.join(ROOT, "cyctc", "cuda", "_backend.py")
    if installed or not os.path.isfile(path):
        from cyctc.cuda import _backend

        return _backend
    name = "_sass_report_backend"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _nvidia_roots():
    spec = importlib.util.find_spec("nvidia")
    return list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []


def find_tool(name):
    """Path of a CUDA binary tool (``cuobjdump``, ``nvdisasm``): ``$CYCTC_<NAME>`` if set (it must exist), else the
    pip wheels' copy (``nvidia-cuda-cuobjdump`` / ``nvidia-cuda-nvdisasm``: ``nvidia/cu13/bin``, or the CUDA 12
    layout ``nvidia/cuda_<name>/bin``), else the PATH, ``$CUDA_HOME/bin``, ``/usr/local/cuda/bin``. None if absent."""
    env = os.environ.get(f"CYCTC_{name.upper()}")
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    cands = []
    for root in _nvidia_roots():
        for sub in ("cu13", f"cuda_{name}", "cu12"):
            cands.append(os.path.join(root, sub, "bin", name))
    for c in cands:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    found = shutil.which(name)
    if found:
        return found
    for base in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if base:
            c = os.path.join(base, "bin", name)
            if os.path.isfile(c) and os.access(c, os.X_OK):
                return c
    return None


def _tool_env():
    """Environment for cuobjdump: nvdisasm's folder on PATH and in NVDISASM_PATH (cuobjdump calls it for some
    architectures)."""
    env = dict(os.environ)
    nvdisasm = find_tool("nvdisasm")
    if nvdisasm:
        d = os.path.dirname(nvdisasm)
        env["PATH"] = d + os.pathsep + env.get("PATH", "")
        env["NVDISASM_PATH"] = d
    return env


def tool_version(path):
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release [\d.]+, V([\d.]+)", out)
    return m.group(1) if m else None


def _libnvrtc(nvrtc_module):
    """ctypes handle of the libnvrtc CuPy loaded (CuPy's getCUBIN drops the cubin's last byte: CuPy 14.2 with NVRTC
    13.0 returns nvrtcGetCUBINSize - 1 bytes, so the cubin is read here through the C API itself)."""
    paths = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if re.search(r"/libnvrtc\.so[.\d]*$", ln.strip())})
    except OSError:
        pass
    if not paths:
        paths = backend()._nvrtc_library_candidates()
    for p in paths:
        try:
            lib = ctypes.CDLL(p)
            lib.nvrtcGetCUBINSize  # noqa: B018 (the symbol must exist)
            return lib
        except (OSError, AttributeError):
            continue
    return None


def _get_cubin(nvrtc, prog):
    lib = _libnvrtc(nvrtc)
    if lib is not None:
        size = ctypes.c_size_t()
        if lib.nvrtcGetCUBINSize(ctypes.c_void_p(prog), ctypes.byref(size)) == 0 and size.value:
            buf = ctypes.create_string_buffer(size.value)
            if lib.nvrtcGetCUBIN(ctypes.c_void_p(prog), buf) == 0:
                return buf.raw
    cubin = bytes(nvrtc.getCUBIN(prog))  # fall back: CuPy's copy, mended up to the size its ELF headers give
    if cubin[:4] == b"\x7fELF" and len(cubin) >= 64:
        import struct

        phoff, shoff = struct.unpack_from("<QQ", cubin, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", cubin, 0x36)
        need = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
        if len(cubin) < need:
            cubin += b"\0" * (need - len(cubin))
    return cubin


def compile_cubin(source_text, names, arch="sm_90", extra_options=(), filename="ctc.cu", _backend=None):
    """NVRTC: ``source_text`` with the kernels ``names`` for ``arch`` -> (cubin bytes, log, {name: lowered name},
    options). Options: ``_backend.nvrtc_options(arch)``, ``-DCYCTC_SASS_MARKERS``, ``-Xptxas=-v`` and
    ``extra_options``; ``_backend`` defaults to :func:`backend`."""
    if _backend is None:
        _backend = backend()
    try:
        nvrtc = _backend.load_nvrtc()
    except Exception as e:  # cupy missing, no libnvrtc
        raise ToolError(f"NVRTC is not available ({type(e).__name__}: {e}); pip install cupy-cuda13x "
                        "'nvidia-cuda-nvrtc==13.0.*'") from e
    if not arch.startswith("sm_"):
        raise ToolError(f"--arch must name a real architecture (sm_XX) to get a cubin, got {arch!r}")
    options = tuple(_backend.nvrtc_options(arch)) + (MARKER_DEFINE, "-Xptxas=-v") + tuple(extra_options)
    prog = nvrtc.createProgram(source_text, filename, (), ())
    try:
        for n in names:
            nvrtc.addNameExpression(prog, n)
        try:
            nvrtc.compileProgram(prog, options)
        except Exception as e:
            raise ToolError(f"NVRTC failed to compile {filename} for {arch}: {e}\n{nvrtc.getProgramLog(prog)}") from e
        log = nvrtc.getProgramLog(prog)
        lowered = {n: nvrtc.getLoweredName(prog, n) for n in names}
        cubin = _get_cubin(nvrtc, prog)
    finally:
        nvrtc.destroyProgram(prog)
    if cubin[:4] != b"\x7fELF":
        raise ToolError("NVRTC returned no cubin")
    return cubin, log, lowered, options


def disassemble(cubin):
    """``cuobjdump -sass`` of a cubin (bytes) -> its text."""
    tool = find_tool("cuobjdump")
    if tool is None:
        raise ToolError("cuobjdump not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm, or put a CUDA "
                        "toolkit's bin on the PATH, or set CYCTC_CUOBJDUMP)")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        try:
            r = subprocess.run([tool, "-sass", path], capture_output=True, text=True, env=_tool_env(), timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise ToolError(f"{tool} -sass failed: {e}") from e
    if r.returncode != 0 or "Function :" not in r.stdout:
        raise ToolError(f"{tool} -sass failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[:2000]}")
    return r.stdout


# ---------------------------------------------------------------------------------------------------------------
# Parsing

_LINE = re.compile(r"^\s*/\*([0-9a-fA-F]{4,})\*/\s+(.*?)\s*;?\s*(?:/\*.*)?$")
_PRED = re.compile(r"^@(!?)(U?P[0-9T])\s+")


class Instr:
    __slots__ = ("addr", "pred", "op", "args", "text")

    def __init__(self, addr, pred, op, args, text):
        self.addr, self.pred, self.op, self.args, self.text = addr, pred, op, args, text

    @property
    def base(self):
        return self.op.split(".")[0]

    def __repr__(self):
        return f"Instr({self.addr:#x} {self.text})"


def parse_sass(text):
    """cuobjdump -sass text -> {function (mangled) name: [Instr, ...]} in address order."""
    funcs, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"Function\s*:\s*(\S+)", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        if cur is None:
            continue
        m = _LINE.match(line)
        if not m:
            continue
        body = m.group(2).strip().rstrip(";").strip()
        if not body:
            continue
        pred = None
        pm = _PRED.match(body)
        if pm:
            pred = ("!" if pm.group(1) else "") + pm.group(2)
            body = body[pm.end():]
        parts = body.split(None, 1)
        cur.append(Instr(int(m.group(1), 16), pred, parts[0], parts[1] if len(parts) > 1 else "", body))
    return funcs


def parse_ptxas_log(log):
    """NVRTC's log with ptxas -v -> {lowered name: dict(registers, spill_stores, spill_loads, stack_frame,
    static_shared, barriers)}."""
    out, cur = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            cur = out.setdefault(m.group(1), dict(registers=None, spill_stores=0, spill_loads=0, stack_frame=0,
                                                  static_shared=0, barriers=0))
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack_frame"], cur["spill_stores"], cur["spill_loads"] = (int(v) for v in m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["static_shared"] = int(s.group(1)) if s else 0
            b = re.search(r"used (\d+) barriers", line)
            cur["barriers"] = int(b.group(1)) if b else 0
    return out


def template_args(name):
    """``cyctc_chain<float, 8>`` -> ["float", "8"] (top-level template arguments; [] without any)."""
    if "<" not in name:
        return []
    inner = name[name.index("<") + 1:name.rindex(">")]
    args, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
    args.append(cur.strip())
    return args


def states_per_thread(name):
    """K of a chain kernel name: its second template argument (an integer), 1 when it has none."""
    args = template_args(name)
    if len(args) < 2:
        return 1
    try:
        return int(args[1].rstrip("uUlL"), 0)
    except ValueError as e:
        raise ValueError(f"{name}: the second template argument must be an integer (K), got {args[1]!r}") from e


def has_k_argument(name):
    return len(template_args(name)) >= 2


def is_chain_kernel(name):
    return name.split("<")[0].strip() == "cyctc_chain"


# ---------------------------------------------------------------------------------------------------------------
# Analysis

_BRANCH = ("BRA", "JMP", "CALL", "BRX", "JMX")


def _marker(ins):
    if ins.base != "PMTRIG":
        return None
    try:
        mask = int(ins.args.split(",")[0].strip(), 0)
    except ValueError:
        return None
    return {1 << OPEN: OPEN, 1 << CLOSE: CLOSE}.get(mask, -1)


def _target(ins):
    if ins.base not in _BRANCH:
        return None
    hexes = re.findall(r"0x[0-9a-fA-F]+", ins.args)
    return int(hexes[-1], 16) if hexes else None


def classify(instrs):
    """Opcode class counts over ``instrs`` (PMTRIG markers excluded)."""
    c = dict(instructions=0, generic_ld=0, generic_st=0, generic_atom=0, lds=0, sts=0, ldg=0, stg=0, ldl=0, stl=0,
             shfl=0, bar=0, fp64=0, mufu=0, branches=0)
    for ins in instrs:
        b, op = ins.base, ins.op
        if b == "PMTRIG":
            continue
        c["instructions"] += 1
        key = {"LD": "generic_ld", "ST": "generic_st", "ATOM": "generic_atom", "LDS": "lds", "STS": "sts",
               "LDG": "ldg", "STG": "stg", "LDL": "ldl", "STL": "stl", "SHFL": "shfl", "BAR": "bar"}.get(b)
        if key:
            c[key] += 1
        if (b in ("DADD", "DMUL", "DFMA", "DSETP", "DSET", "DMNMX", "DMMA") or ".F64" in op
                or (b == "MUFU" and "64H" in op)):
            c["fp64"] += 1
        if b == "MUFU" and "64H" not in op:
            c["mufu"] += 1
        if b in _BRANCH:
            c["branches"] += 1
    c["generic"] = c["generic_ld"] + c["generic_st"] + c["generic_atom"]
    return c


def find_copies(instrs):
    """The marked copies of the loop body: [(index of first opening marker, index of last closing marker)]."""
    copies, state, start, last_close = [], "out", None, None
    for i, ins in enumerate(instrs):
        k = _marker(ins)
        if k is None:
            continue
        if k == -1:
            raise MarkerError(f"unexpected PMTRIG operand at {ins.addr:#x}: {ins.text}")
        if k == OPEN:
            if state == "closing":  # a new copy begins
                copies.append((start, last_close))
                state = "out"
            if state == "out":
                start, state = i, "open"
        else:
            if state == "out":
                raise MarkerError(f"closing marker (PMTRIG 0x{1 << CLOSE:x}) at {ins.addr:#x} before any opening "
                                  "marker")
            state, last_close = "closing", i
    if state == "open":
        raise MarkerError(f"opening marker at {instrs[start].addr:#x} is never closed")
    if state == "closing":
        copies.append((start, last_close))
    return copies


def _straight_block(instrs, index_of, start_addr, limit=512):
    """Instructions from ``start_addr`` to the first unconditional BRA/EXIT/RET (inclusive): (count, end target)."""
    i = index_of.get(start_addr)
    if i is None:
        return 0, None
    n = 0
    while i < len(instrs) and n < limit:
        ins = instrs[i]
        n += 1
        if ins.pred is None and ins.base in ("EXIT", "RET"):
            return n, None
        if ins.pred is None and ins.base in ("BRA", "JMP"):
            return n, _target(ins)
        i += 1
    return n, None


def strip_padding(instrs):
    """``instrs`` without the function's tail: the final ``BRA`` to itself and the alignment ``NOP``s after it."""
    end = len(instrs)
    while end and instrs[end - 1].base == "NOP":
        end -= 1
    if end and instrs[end - 1].base == "BRA" and _target(instrs[end - 1]) == instrs[end - 1].addr:
        end -= 1
    return instrs[:end]


def analyse_function(instrs, K=1, require_markers=True):
    """Per-frame counts of the marked loop of one function's SASS (see the module docstring for the rules).

    Returns a dict (``None`` when the function has no markers and ``require_markers`` is False)."""
    whole = classify(strip_padding(instrs))
    copies = find_copies(instrs)
    if not copies:
        if require_markers:
            raise MarkerError("no CYCTC_MARK markers (PMTRIG 0x2 ... PMTRIG 0x4) in the SASS: was the source compiled "
                              f"with {MARKER_DEFINE}, and does the per-frame loop still carry CYCTC_MARK(1)/(2)?")
        return None
    index_of = {ins.addr: i for i, ins in enumerate(instrs)}
    inside = set()
    per_copy = []
    for a, b in copies:
        body = instrs[a + 1:b]
        inside.update(range(a, b + 1))
        per_copy.append(classify(body)["instructions"])
    body_all = [instrs[i] for a, b in copies for i in range(a + 1, b)]
    counts = classify(body_all)
    n = len(copies)
    per_frame = {k: v / n for k, v in counts.items()}

    # the loop around each copy: the first backward branch after its last closing marker whose target is at or
    # before its opening marker
    loops = {}
    for a, b in copies:
        for j in range(b + 1, len(instrs)):
            t = _target(instrs[j])
            if t is not None and t <= instrs[a].addr:
                loops.setdefault((index_of.get(t, a), j), []).append((a, b))
                break
            if instrs[j].pred is None and instrs[j].base in ("EXIT", "RET"):
                break
    back_edge_total = 0
    loop_info = []
    for (lo, hi), cps in sorted(loops.items()):
        extra = [instrs[i] for i in range(lo, hi + 1) if i not in inside and instrs[i].base != "PMTRIG"]
        back_edge_total += len(extra)
        loop_info.append(dict(start=f"{instrs[lo].addr:#x}", branch=f"{instrs[hi].addr:#x}", copies=len(cps),
                              back_edge_instructions=len(extra)))
    loop_ranges = [(lo, hi) for lo, hi in loops]

    # inner loops (a backward branch inside one copy) and branches leaving the loop
    inner, out_of_line = [], {}
    for a, b in copies:
        for j in range(a + 1, b):
            t = _target(instrs[j])
            if t is None:
                continue
            ti = index_of.get(t)
            if ti is not None and a < ti <= j:
                inner.append(dict(start=f"{t:#x}", branch=f"{instrs[j].addr:#x}",
                                  instructions=sum(1 for i in range(ti, j + 1) if instrs[i].base != "PMTRIG")))
            elif ti is None or not (a <= ti <= b or any(lo <= ti <= hi for lo, hi in loop_ranges)):
                if t in out_of_line:
                    continue
                size, back = _straight_block(instrs, index_of, t)
                bi = index_of.get(back) if back is not None else None
                returns = bi is not None and any(x <= bi <= y for x, y in copies)
                out_of_line[t] = dict(target=f"{t:#x}", from_=f"{instrs[j].addr:#x}", branch=instrs[j].op,
                                      instructions=size, returns_into_body=returns)
    be = back_edge_total / n if loops else 0.0
    per_frame_be = per_frame["instructions"] + be
    one_pass = per_frame["instructions"] - sum(d["instructions"] for d in inner) / n
    return dict(
        K=K, copies=n, copy_ranges=[(f"{instrs[a].addr:#x}", f"{instrs[b].addr:#x}") for a, b in copies],
        instructions_per_copy=per_copy,
        instr_per_frame=per_frame["instructions"], back_edge_per_frame=be, instr_per_frame_with_back_edge=per_frame_be,
        instr_per_state=per_frame_be / K, instr_per_frame_without_inner_loops=one_pass, loops=loop_info, back_edge_found=bool(loops),
        per_frame=per_frame, inner_loops=inner,
        out_of_line=sorted(out_of_line.values(), key=lambda d: int(d["target"], 16)),
        whole_kernel=whole,
    )


def analyse_source(source_text, names, arch="sm_90", extra_options=(), filename="ctc.cu", marked=None, _backend=None):
    """Compile, disassemble and analyse. ``marked(name) -> bool``: kernels whose markers are required (default: the
    chain kernels). Returns the report dict (see :func:`main`'s --json)."""
    if marked is None:
        marked = is_chain_kernel
    cubin, log, lowered, options = compile_cubin(source_text, names, arch, extra_options, filename, _backend)
    sass = disassemble(cubin)
    funcs = parse_sass(sass)
    res = parse_ptxas_log(log)
    kernels = []
    for name in names:
        low = lowered[name]
        if low not in funcs:
            raise ToolError(f"{name} ({low}) is missing from cuobjdump's output")
        entry = dict(name=name, lowered=low, **res.get(low, {}))
        entry["spill_bytes"] = entry.get("spill_stores", 0) + entry.get("spill_loads", 0)
        req = marked(name)
        try:
            try:
                K = states_per_thread(name)
            except ValueError:
                if req:
                    raise
                K = 1
            loop = analyse_function(funcs[low], K, require_markers=req)
        except (MarkerError, ValueError) as e:
            raise MarkerError(f"{name} ({arch}): {e}") from e
        entry["loop"] = loop
        entry["whole_kernel"] = classify(strip_padding(funcs[low]))
        kernels.append(entry)
    return dict(file=filename, arch=arch, options=list(options), kernels=kernels,
                source_sha256=hashlib.sha256(source_text.encode()).hexdigest())


# ---------------------------------------------------------------------------------------------------------------
# Output

COLUMNS = [("kernel", 26), ("K", 2), ("regs", 4), ("spill", 5), ("smem", 5), ("copies", 6), ("instr/frame", 11),
           ("back edge", 9), ("instr/state", 11), ("generic LD/ST", 13), ("LDS", 4), ("STS", 4), ("LDG", 4),
           ("STG", 4), ("SHFL", 4), ("BAR", 3), ("FP64", 4), ("MUFU", 4)]


def _num(v):
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.1f}"
    return str(int(v))


def format_table(report):
    head = " ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(COLUMNS))
    lines = [head, "-" * len(head)]
    for k in report["kernels"]:
        lp = k["loop"]
        pf = lp["per_frame"] if lp else None
        vals = [k["name"], lp["K"] if lp else None, k.get("registers"), k["spill_bytes"], k.get("static_shared"),
                lp["copies"] if lp else None, lp["instr_per_frame"] if lp else None,
                lp["back_edge_per_frame"] if lp else None, lp["instr_per_state"] if lp else None,
                (f"{_num(pf['generic_ld'])}/{_num(pf['generic_st'])}" if pf else None)]
        vals += [pf[c] if pf else None for c in ("lds", "sts", "ldg", "stg", "shfl", "bar", "fp64", "mufu")]
        lines.append(" ".join(f"{(v if isinstance(v, str) else _num(v)):>{w}}" if i else f"{v:<{w}}"
                              for i, (v, (c, w)) in enumerate(zip(vals, COLUMNS))))
    notes = []
    for k in report["kernels"]:
        lp = k["loop"]
        wk = k["whole_kernel"]
        notes.append(f"{k['name']}: whole kernel {wk['instructions']} instructions, generic LD/ST {wk['generic_ld']}/"
                     f"{wk['generic_st']}, FP64 {wk['fp64']}; stack {k.get('stack_frame', 0)} B, barriers "
                     f"{k.get('barriers', 0)}")
        if not lp:
            continue
        notes.append(f"    loop copies at {', '.join(f'{a}-{b}' for a, b in lp['copy_ranges'])} "
                     f"({', '.join(map(str, lp['instructions_per_copy']))} instructions between the markers); "
                     + ("; ".join(f"loop {d['start']}-{d['branch']}: {d['back_edge_instructions']} back-edge "
                                  f"instructions for {d['copies']} cop{'y' if d['copies'] == 1 else 'ies'}"
                                  for d in lp["loops"]) or "no back edge found after the closing marker"))
        for d in lp["inner_loops"]:
            notes.append(f"    inner loop {d['start']}-{d['branch']}: {d['instructions']} instructions (counted once "
                         "in instr/frame)")
        if lp["inner_loops"]:
            notes.append(f"    instr/frame without the inner loops (one pass, one tile): "
                         f"{_num(lp['instr_per_frame_without_inner_loops'])}")
        for d in lp["out_of_line"]:
            kind = "out of line, branches back" if d["returns_into_body"] else "leaves the loop"
            notes.append(f"    {d['branch']} at {d['from_']} -> {d['target']}: {d['instructions']} instructions "
                         f"({kind}; not in instr/frame)")
    return "\n".join(lines + [""] + notes)


def _git_rev():
    try:
        r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=30)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="sm_90", help="real architecture to compile for (default sm_90)")
    ap.add_argument("--source", default="ctc.cu", help="kernel file of cyctc/cuda (default ctc.cu)")
    ap.add_argument("--json", help="also write the report to this JSON file")
    ap.add_argument("--installed", action="store_true",
                    help="report on the installed cyctc's kernels (default: this checkout's cyctc/cuda)")
    args = ap.parse_args(argv)
    try:
        _backend = backend(args.installed)
        text = _backend.kernel_source(args.source)
        names = _backend.name_expressions(args.source)
        report = analyse_source(text, names, args.arch, filename=args.source, _backend=_backend)
        if args.source == "ctc.cu" and not any(is_chain_kernel(k["name"]) for k in report["kernels"]):
            raise MarkerError("no chain kernel (cyctc_chain<...>) among the name expressions")
    except ToolError as e:
        print(f"sass_report: error: {e}", file=sys.stderr)
        return EXIT_TOOLS
    except MarkerError as e:
        print(f"sass_report: error: {e}", file=sys.stderr)
        return EXIT_MARKERS
    nvrtc_version = ".".join(map(str, _backend.load_nvrtc().getVersion()))
    cuobjdump = find_tool("cuobjdump")
    report.update(date=datetime.date.today().isoformat(), git=_git_rev(), nvrtc=nvrtc_version,
                  cuobjdump=tool_version(cuobjdump), cuobjdump_path=cuobjdump, nvdisasm_path=find_tool("nvdisasm"))
    report["backend"] = os.path.abspath(_backend.__file__)
    print(f"SASS report: {os.path.join(os.path.dirname(report['backend']), args.source)} for {args.arch} (NVRTC {nvrtc_version}, cuobjdump {report['cuobjdump']}; "
          f"source sha256 {report['source_sha256'][:12]}, git {report['git']})")
    print("per frame and thread, static, between the CYCTC_MARK markers (PMTRIG excluded), averaged over the copies; "
          "instr/state = (instr/frame + back edge) / K")
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
