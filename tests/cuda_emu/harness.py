"""Build tests/cuda_emu/driver.cpp against the packaged .cu files and run launch plans through it on the CPU.

The plan executed is the one cyctc.cuda._backend computes for the real CuPy launch (launch_config), so grid, block,
shared-memory size and every kernel argument are exactly what a GPU would receive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict, Optional

import numpy as np

from cyctc.cuda import _backend

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA_DIR = os.path.dirname(os.path.abspath(_backend.__file__))
MODES = ("FIBER_FWD", "FIBER_RAND", "THREADS")
BASE_FLAGS = ("-std=c++20", "-O2", "-pthread", "-Wall", "-Wno-unused-function", "-Werror")
TSAN_FLAGS = ("-std=c++20", "-O1", "-g1", "-pthread", "-fsanitize=thread")


# Deliberately broken copies of kernel files, built into the same driver under `namespace mutant` (kernel names
# "mutant::..."), to show that the emulation catches what it claims to: (file, original text, replacement).
MUTANTS = {
    "no_frame_barrier": ("ctc.cu", ": __syncthreads_or(lor != 0);", ": false;"),
}


def mutant_source(name: str) -> str:
    src_file, old, new = MUTANTS[name]
    text = _backend.kernel_source(src_file)
    if text.count(old) != 1:
        raise AssertionError(f"mutant {name}: the text to replace is not found exactly once in {src_file}")
    return text.replace(old, new)


def _key(name: str) -> str:
    """A kernel name expression as the driver's plans spell it: one token (``cyctc_chain<float,8>``)."""
    return name.replace(" ", "")


def write_kernel_table(build_dir: str) -> None:
    """kernels.inc: #include every kernel file (and each mutant, in its own namespace) and list their kernels."""
    lines = [f'#include "{os.path.join(CUDA_DIR, src)}"' for src in _backend.SOURCES]
    entries = [f'X("{_key(n)}", ({n}))' for src in _backend.SOURCES for n in _backend.name_expressions(src)]
    for name, (src_file, _, _) in MUTANTS.items():
        path = os.path.join(build_dir, f"mutant_{name}_{src_file}")
        with open(path, "w") as f:
            f.write(mutant_source(name))
        lines += [f"namespace mutant_{name} {{", f'#include "{path}"', "}"]
        entries += [f'X("mutant_{name}::{_key(n)}", (mutant_{name}::{n}))' for n in _backend.name_expressions(src_file)]
    lines.append(f"#define EMU_KERNEL_TABLE(X) {' '.join(entries)}")
    with open(os.path.join(build_dir, "kernels.inc"), "w") as f:
        f.write("\n".join(lines) + "\n")


def build_command(build_dir: str, exe: str, flags) -> list:
    cxx = os.environ.get("CXX", "g++")
    return [cxx, *flags, f"-I{build_dir}", f"-I{HERE}", os.path.join(HERE, "driver.cpp"), "-o", exe]


def compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "g++"))


def _plan_arg(kind, value) -> str:
    if kind == "buf":
        return f"buf:{value}"
    if kind == "null":
        return "null:0"
    if kind == "f64":
        return f"f64:{float(value)!r}"
    return f"{kind}:{int(value)}"


class Run:
    """Inputs (and poisoned outputs) of one plan, written once; executable in any mode."""

    def __init__(self, workdir: str, plan: _backend.Plan, inputs: Dict[str, np.ndarray],
                 outputs: Dict[str, tuple], mutant: Optional[str] = None, ftz: bool = False):
        os.makedirs(workdir, exist_ok=True)
        self.workdir, self.outputs, self.ftz = workdir, outputs, ftz
        lines = []
        for name, arr in inputs.items():
            path = os.path.join(workdir, f"in_{name}.bin")
            np.ascontiguousarray(arr).tofile(path)
            lines.append(f"buffer {name} {arr.dtype.name} {arr.size} {path}")
        for name, (dtype, shape) in outputs.items():
            lines.append(f"buffer {name} {np.dtype(dtype).name} {max(1, int(np.prod(shape)))} -")
        for name, dtype, count in plan.workspaces:
            lines.append(f"buffer {name} {dtype} {count} -")
        for ln in plan.launches:
            args = " ".join(_plan_arg(k, v) for k, v in ln.args)
            kernel = _key(ln.kernel)
            if mutant and MUTANTS[mutant][0] == ln.source:
                kernel = f"mutant_{mutant}::{kernel}"
            lines.append(f"launch {kernel} {' '.join(map(str, ln.grid))} {' '.join(map(str, ln.block))} "
                         f"{ln.shared_bytes} {len(ln.args)} {args}")
        self.plan_lines = lines

    def read_back(self, name, dtype, shape):
        """Also return the workspace ``name`` (its first prod(shape) elements) after the launches."""
        self.outputs[name] = (dtype, shape)

    def __call__(self, exe: str, mode: str, seed: int = 1, env=None, check=True):
        tag = f"{os.path.basename(exe)}_{mode}_{seed}"
        plan_path = os.path.join(self.workdir, f"plan_{tag}.txt")
        outs = {name: os.path.join(self.workdir, f"out_{name}_{tag}.bin") for name in self.outputs}
        with open(plan_path, "w") as f:
            f.write("\n".join(self.plan_lines + [f"output {n} {p}" for n, p in outs.items()]) + "\n")
        env = dict(os.environ if env is None else env, EMU_FTZ="1" if self.ftz else "0")
        proc = subprocess.run([exe, plan_path, mode, str(seed)], capture_output=True, text=True, env=env,
                              timeout=600)
        if not check:
            return proc
        assert proc.returncode == 0, f"driver failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        result = {"_barriers": barrier_counts(proc.stderr)}
        for name, (dtype, shape) in self.outputs.items():
            result[name] = np.fromfile(outs[name], dtype=dtype)[:int(np.prod(shape))].reshape(shape)
        return result


def barrier_counts(stderr: str) -> Dict[str, int]:
    """{kernel: most __syncthreads passed by a thread of any block} from the driver's emu-barriers lines."""
    out = {}
    for line in stderr.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "emu-barriers":
            name = parts[1].replace(",", ", ")  # the plan's one-token spelling back to the name expression
            out[name] = max(out.get(name, 0), int(parts[2]))
    return out


def loss_run(workdir, raw, time_major, labels, label_length, logit_length, blank, merge_repeated, *,
             want_grad=True, grad_scale=None, dynamic_shared_limit=None, mutant=None, ftz=None, budget_k=None,
             memory_limit=None, extra_outputs=()) -> Run:
    """A Run of the CTC loss plan for logits ``raw`` stored (T, B, C) when ``time_major`` else (B, T, C).

    ``ftz`` (default: True for float32) runs with float subnormals flushed to zero, as CuPy's -ftz=true build does.
    ``budget_k``: the budget plan with checkpoints every k frames (0: loss only) instead (``_backend._plan``);
    ``memory_limit``: the plan launch_config makes under that limit. ``extra_outputs``: workspaces to read back
    (``"fmt"``: int32 (2, B)).
    """
    x = raw.swapaxes(0, 1) if time_major else raw
    B, T, C = x.shape
    item = raw.itemsize
    strides = (x.strides[0] // item, x.strides[1] // item)
    if budget_k is not None:
        plan = _backend._plan(B, T, C, labels.shape[1], _backend._dtype_name(raw.dtype), strides, blank,
                              merge_repeated, strides if want_grad else None, budget_k=budget_k)
    else:
        plan = _backend.launch_config(B, T, C, labels.shape[1], raw.dtype, strides, blank=blank,
                                      merge_repeated=merge_repeated, grad_strides=strides if want_grad else None,
                                      dynamic_shared_limit=dynamic_shared_limit, memory_limit=memory_limit)
    inputs = {"x": raw, "labels": np.ascontiguousarray(labels, np.int32),
              "label_length": np.asarray(label_length, np.int32), "logit_length": np.asarray(logit_length, np.int32)}
    outputs = {"loss": (np.float64, (B,))}
    if want_grad:
        inputs["grad_scale"] = np.ones(B) if grad_scale is None else np.asarray(grad_scale, np.float64)
        outputs["grad"] = (raw.dtype, raw.shape)  # same layout as the logits
    run = Run(workdir, plan, inputs, outputs, mutant, raw.dtype == np.float32 if ftz is None else ftz)
    run.plan = plan
    for name in extra_outputs:  # a workspace read back after the launches
        dtype = next(d for n, d, _ in plan.workspaces if n == name)
        run.read_back(name, dtype, (2, B) if name == "fmt" else (next(c for n, _, c in plan.workspaces if n == name),))
    return run


def grad_view(result, time_major):
    g = result["grad"]
    return g.swapaxes(0, 1) if time_major else g


def greedy_run(workdir, raw_time_major, logit_length, blank, merge_repeated) -> Run:
    x = raw_time_major.swapaxes(0, 1)
    B, T, C = x.shape
    item = x.itemsize
    plan = _backend.greedy_launch_config(B, T, C, x.dtype, (x.strides[0] // item, x.strides[1] // item),
                                         blank=blank, merge_repeated=merge_repeated)
    inputs = {"x": raw_time_major, "logit_length": np.asarray(logit_length, np.int32)}
    outputs = {"decoded": (np.int32, (B, T)), "decoded_length": (np.int32, (B,)),
               "neg_sum_logits": (np.float64, (B,))}
    return Run(workdir, plan, inputs, outputs)
