"""benchmarks/gpu_model.py: runs on every GPU benchmark shape for every design the backend provides, and its
arithmetic holds together (physical lower bounds, sums, the new design's critical-path and launch bounds)."""

import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import gpu_model  # noqa: E402
from bench_gpu import GPU_SHAPES  # noqa: E402

from cyctc.cuda import _backend  # noqa: E402

HW = gpu_model.H100
DESIGNS = ("old", "new", "torch")


@pytest.fixture(scope="module")
def results():
    return gpu_model.model(list(GPU_SHAPES.items()))


def test_every_shape_and_design(results):
    assert [r["shape"] for r in results] == list(GPU_SHAPES)
    for r in results:
        B, T, C, L = r["B"], r["T"], r["C"], r["L"]
        for design in DESIGNS:
            e = r["designs"][design]
            if e is None:  # only the new design, and only on a backend without launch_plan_summary
                assert design == "new" and not hasattr(_backend, "launch_plan_summary")
                continue
            logits = B * T * C * 4
            # the logits are read at least once and the gradient written once
            assert e["bytes"] >= 2 * logits, (r["shape"], design)
            assert e["launches"] == len(e["per_launch"]) >= 2
            for ln in e["per_launch"]:
                blocks = math.prod(ln["grid"])
                threads = math.prod(ln["block"])
                assert blocks >= 1 and 1 <= threads <= 1024 and 0 <= ln["shared_bytes"] <= 48 * 1024
                # no launch beats the HBM peak or the whole GPU's issue rate
                assert ln["est_us"] >= (ln["bytes_read"] + ln["bytes_written"]) / (HW["hbm_tb_s"] * 1e6)
                assert ln["est_us"] >= HW["launch_gap_us"]
            assert e["device_us"] == pytest.approx(sum(ln["est_us"] for ln in e["per_launch"]))
            assert e["est_us"] == max(e["device_us"], e["host_us"])
            # a chain of T frames cannot take less than T barrier steps in any design
            assert e["barrier_steps"] >= T
            assert e["device_us"] >= T * HW["barrier_cycles"] / (HW["clock_ghz"] * 1e3)


def test_new_design_bounds(results):
    """Issue 10: at most T + 2 barrier-separated steps and 3 launches for loss + gradient, almost no FP64."""
    if not hasattr(_backend, "launch_plan_summary"):
        pytest.skip("this backend has no launch_plan_summary (the second-generation kernels are not merged)")
    for r in results:
        e = r["designs"]["new"]
        assert e["barrier_steps"] <= r["T"] + 2
        assert e["launches"] <= 3
        assert e["fp64_ops"] <= 64 * r["B"] + 8 * r["B"] * r["T"]  # per-example / per-row scalars at most


def test_old_design_is_the_first_generation_plan(results):
    for r in results:
        e = r["designs"]["old"]
        assert e["barrier_steps"] == 2 * r["T"] + 2  # forward then backward in one block
        assert e["launches"] == 3 and e["fp32_ops"] == 0  # every row kernel and the recursion in FP64


def test_one_launch_arithmetic():
    """A hand-made launch: each bound is the formula stated in the module docstring."""
    hz = HW["clock_ghz"] * 1e9
    mem = dict(kernel="k", grid=(1000, 1, 1), block=(256, 1, 1), shared_bytes=0, barrier_steps=0,
               bytes_read=3_000_000_000, bytes_written=0, fp64_ops=0, fp32_ops=0, transcendentals=0)
    t, bound = gpu_model.launch_time_us(mem, False)
    assert bound == "memory"
    assert t == pytest.approx(3e9 / (HW["hbm_tb_s"] * 1e12 * HW["hbm_efficiency"]) * 1e6 + HW["launch_gap_us"])
    few = dict(mem, grid=(2, 1, 1), bytes_read=1_000_000)
    t, _ = gpu_model.launch_time_us(few, False)  # two blocks: two SMs' worth of bandwidth
    assert t == pytest.approx(1e6 / (2 * HW["sm_bytes_per_clock"] * hz) * 1e6 + HW["launch_gap_us"])
    lat = dict(mem, grid=(4, 1, 1), block=(128, 1, 1), barrier_steps=1000, bytes_read=0, fp32_ops=1000 * 4 * 128 * 10)
    t, bound = gpu_model.launch_time_us(lat, False)
    step = HW["barrier_cycles"] + max(HW["shared_cycles"] + 10 * HW["dep_cycles_fp32"], HW["l2_cycles"])
    assert bound == "latency" and t == pytest.approx(1000 * step / hz * 1e6 + HW["launch_gap_us"])
    t2, _ = gpu_model.launch_time_us(lat, True, states=256)  # loads after the barrier, 2 tiles of 128 states
    step2 = HW["barrier_cycles"] + 2 * (HW["shared_cycles"] + HW["l2_cycles"]) + 10 * HW["dep_cycles_fp32"]
    assert t2 == pytest.approx(1000 * step2 / hz * 1e6 + HW["launch_gap_us"])


def test_markdown_and_cli(capsys, tmp_path):
    assert gpu_model.main(["--shapes", "tiny", "x=2,30,5,4", "--launches", "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "| tiny (1, 50, 20, 10) |" in out and "| x (2, 30, 5, 4) |" in out
    assert "ctc_loss_gpu_kernel (alpha)" in out
    assert (tmp_path / "m.json").stat().st_size > 0
