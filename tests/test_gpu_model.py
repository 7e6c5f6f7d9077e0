"""benchmarks/gpu_model.py: the instruction-level H200 model holds together (its formulas, occupancy, monotonicity in
T and S), the second generation's SASS counts reproduce issue 20's finding (behind PyTorch native on long and
one-long), and the third-generation inputs are taken from the SASS report when ctc.cu has a cyctc_chain<T, K>."""

import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import gpu_model as gm  # noqa: E402
from bench_gpu import GPU_SHAPES  # noqa: E402

HW = gm.H200


@pytest.fixture(scope="module")
def gen2():
    return gm.gen2_counts(gm.load_sass("committed")[0])


@pytest.fixture(scope="module")
def gen3():
    return gm.gen3_params(None)


@pytest.fixture(scope="module")
def results(gen2, gen3):
    return gm.model(list(GPU_SHAPES.items()), gen2, gen3)


def test_h200_constants():
    assert (HW["sm_count"], HW["clock_ghz"], HW["hbm_tb_s"]) == (132, 1.98, 4.8)
    assert (HW["schedulers_per_sm"], HW["regs_per_sm"], HW["smem_per_sm"]) == (4, 65536, 228 * 1024)


def test_gen2_counts_from_the_committed_sass(gen2):
    # sass_report on today's ctc.cu (sm_90): 559 + 2 back edge for one tile, 487 per further tile, 64 registers
    assert gen2 == dict(one_pass=561, per_tile=487, registers=64)


def test_every_shape_every_design(results):
    assert [r["shape"] for r in results] == list(GPU_SHAPES)
    for r in results:
        assert set(r["designs"]) == {"torch", "gen2", "gen3"}
        for name, e in r["designs"].items():
            assert e["device_us"] == pytest.approx(sum(ln["est_us"] for ln in e["per_launch"]))
            assert e["est_us"] == max(e["device_us"], e["host_us"])
            for ln in e["per_launch"]:
                assert ln["est_us"] >= HW["launch_gap_us"]
                assert 1 <= ln["block"][0] <= 1024
            chains = [ln for ln in e["per_launch"] if ln["kind"] == "chain"]
            assert chains, (r["shape"], name)
            for ln in chains:  # a chain takes at least T frames of its own dependent path
                assert ln["frame_cycles"] == max(ln["issue_cycles"], ln["latency_cycles"])
                assert ln["est_us"] >= r["T"] * ln["latency_cycles"] / (HW["clock_ghz"] * 1e3)
        for d in ("gen2", "gen3"):
            assert r["ratio"][d] == pytest.approx(r["designs"]["torch"]["est_us"] / r["designs"][d]["est_us"])


def test_second_generation_is_behind_pytorch_on_long_inputs(results):
    """Issue 20: from the SASS, gen-2 is ahead on speech-char and the training batch but behind PyTorch native on
    long and one-long."""
    ratio = {r["shape"]: r["ratio"]["gen2"] for r in results}
    assert ratio["long"] < 1 and ratio["one-long"] < 1
    assert ratio["speech-char"] > 1 and ratio["training"] > 1


@pytest.mark.parametrize("design", ["torch", "gen2", "gen3"])
def test_monotone_in_frames_and_states(design, gen2, gen3):
    def dev(B, T, C, L):
        f = {"torch": lambda: gm.torch_native(B, T, C, L), "gen2": lambda: gm.cyctc_gen2(B, T, C, L, gen2),
             "gen3": lambda: gm.cyctc_gen3(B, T, C, L, gen3)}[design]
        return sum(ln["est_us"] for ln in f())

    for B, C in ((1, 29), (32, 29), (64, 1000)):
        by_t = [dev(B, T, C, 100) for T in (250, 500, 1000, 2000, 4000)]
        assert all(a < b for a, b in zip(by_t, by_t[1:])), (design, B, C, by_t)
        if design == "torch" and B > 1:
            # not in S: PyTorch packs 1024 // (power of two >= S) examples into a block, so a longer label can
            # spread the same batch over more SMs (B = 32: L 60 puts 8 examples on each of 4 SMs, L 150 2 on 16)
            continue
        by_l = [dev(B, 3000, C, L) for L in (10, 60, 150, 300, 600, 1200)]
        assert all(a <= b for a, b in zip(by_l, by_l[1:])), (design, B, C, by_l)
        assert by_l[-1] > by_l[0]


def test_gen3_more_instructions_is_slower_and_more_states_per_thread_fewer_warps(gen3):
    def chain(p, L=600):
        return next(ln for ln in gm.cyctc_gen3(1, 3000, 29, L, p) if ln["kind"] == "chain")

    slow = chain(dict(gen3, instr_per_state=24))
    fast = chain(dict(gen3, instr_per_state=12))
    assert slow["est_us"] > fast["est_us"]
    assert chain(dict(gen3, K=4))["warps_per_chain"] == math.ceil(1201 / 128)
    assert chain(dict(gen3, K=8))["warps_per_chain"] == math.ceil(1201 / 256)


def test_gen3_one_warp_chain_has_no_barrier(gen3):
    ln = next(ln for ln in gm.cyctc_gen3(256, 100, 40, 20, gen3) if ln["kind"] == "chain")  # S = 41 <= 32 K
    assert ln["warps_per_chain"] == 1 and ln["chains_per_block"] == gen3["warps_per_block"]
    K = gen3["K"]
    instr = gen3["instr_per_state"] * K
    want = instr * HW["alu_latency"] / min(K, 4) + gen3["collectives"] * HW["shfl_latency"]  # no barrier, no memory
    assert ln["latency_cycles"] == pytest.approx(want)


def test_chain_launch_arithmetic():
    hz = HW["clock_ghz"] * 1e9
    # 264 chains of 2 warps, 4 to a block: 66 blocks on 66 SMs, 8 warps an SM = 2 per scheduler
    ln = gm.chain_launch("k", 1000, 264, 2, 4, 100, registers=32, ilp=4, collectives=2, memory_on_path=30,
                         barrier=True)
    assert ln["grid"] == (66, 1, 1) and ln["block"] == (256, 1, 1) and ln["waves"] == 1
    assert ln["issue_cycles"] == 2 * 100
    assert ln["latency_cycles"] == 100 * HW["alu_latency"] / 4 + 2 * HW["shfl_latency"] + 30 + HW["barrier_cycles"]
    assert ln["est_us"] == pytest.approx(1000 * max(200, ln["latency_cycles"]) / hz * 1e6 + HW["launch_gap_us"])
    # MUFU-heavy: the SFU's 8 clocks a warp-wide instruction bound the issue
    assert gm.chain_launch("k", 10, 1, 32, 1, 10, mufu=5)["issue_cycles"] == 8 * 5 * 8
    # more blocks than fit: waves
    many = gm.chain_launch("k", 10, 132 * 2 * 3, 32, 1, 10, registers=32)
    assert many["blocks_per_sm"] == 2 and many["waves"] == 3


def test_occupancy_limits():
    assert gm.occupancy(1024, 64, 0) == 1          # registers: 64 x 1024 = the whole file
    assert gm.occupancy(1024, 32, 0) == 2          # warps: 64 per SM
    assert gm.occupancy(32, 16, 0) == 32           # blocks: 32 per SM
    assert gm.occupancy(256, 32, 100 * 1024) == 2  # shared memory: 228 KiB
    assert gm.occupancy(1024, 255, 0) == 0
    with pytest.raises(ValueError):
        gm.chain_launch("k", 10, 1, 32, 1, 10, registers=255)


def test_gen3_parameters_from_a_sass_report():
    report = {"kernels": [
        {"name": "cyctc_chain<float>", "registers": 64, "loop": {"K": 1}},
        {"name": "cyctc_chain<float, 4>", "registers": 48,
         "loop": {"K": 4, "instr_per_state": 19.5, "per_frame": {"shfl": 3}}}]}
    p = gm.gen3_params(report)
    assert (p["K"], p["instr_per_state"], p["registers"], p["collectives"]) == (4, 19.5, 48, 3)
    assert p["source"].startswith("measured")
    assert gm.gen3_params(report, K=8)["K"] == 8
    assert gm.gen3_params(None)["source"].startswith("assumed")


def test_torch_gradient_variant_rule():
    assert not gm.torch_is_large(1, 50, 20)      # tiny: the thread-per-frame collect
    assert gm.torch_is_large(64, 1000, 5000)     # training batch: the atomics variant
    names = [ln["kernel"] for ln in gm.torch_native(64, 1000, 5000, 200)]
    assert "collect_nonblank (atomics)" in names and "ctc_loss_log_alpha (alpha)" in names


def test_cli(capsys, tmp_path):
    assert gm.main(["--shapes", "tiny", "x=2,30,5,4", "--launches", "--json", str(tmp_path / "m.json"),
                    "--k", "4", "--instr-per-state", "20"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATES" in out and "| tiny (1, 50, 20, 10) |" in out and "| x (2, 30, 5, 4) |" in out
    assert "K = 4, 20 instructions per state (given on the command line)" in out
    assert "cyctc_chain<float, 4>" in out and "ctc_loss_log_alpha (alpha)" in out
    assert (tmp_path / "m.json").stat().st_size > 0
    assert gm.main(["--sass", str(tmp_path / "missing.json")]) == 2


def test_cyctc_glue_is_measured_not_assumed(monkeypatch):
    """cyctc's host floor comes from timing the real glue (gpu_model.measure_glue on tests/fake_cupy.py), not from a
    constant: a glue made 2 ms slower measures at least 2 ms more, and the model's host time is the measurement
    plus CuPy's cost per operation and per launch."""
    import time

    import cyctc

    shapes = [("tiny", GPU_SHAPES["tiny"])]
    fast = gm.measure_glue(shapes, repeats=2, calls=5)["tiny"]
    assert "host_us_cyctc" not in HW
    assert fast["method"] == gm.GLUE_METHOD and fast["us"] > 0
    assert fast["launches"] == 3 and fast["syncs"] == 0 and fast["h2d"] == 1  # rows, chains, gradient
    real = cyctc.ctc_loss

    def slow(*args, **kwargs):
        time.sleep(0.002)
        return real(*args, **kwargs)
    monkeypatch.setattr(cyctc, "ctc_loss", slow)
    slowed = gm.measure_glue(shapes, repeats=2, calls=5)["tiny"]
    assert slowed["us"] >= fast["us"] + 1900
    gen3 = gm.gen3_params(None)
    r, = gm.model(shapes, None, gen3, glue={"tiny": slowed})
    e = r["designs"]["gen3"]
    assert r["glue"] is slowed
    assert e["host_us"] == pytest.approx(slowed["us"] + HW["host_us_per_cupy_op"] * (slowed["ops"] + slowed["h2d"])
                                         + HW["host_us_per_launch"] * e["launches"])
    import sys as _sys
    assert "cupy" not in _sys.modules or not getattr(_sys.modules["cupy"], "COUNTS", None)  # the stand-in is gone
