"""tests/test_gpu.py's public-API tests run on the CPU, with tests/fake_cupy.py as ``cupy`` and the backend entries
emulated by the CPU kernels: the GPU tests have never run on a device, and this catches mistakes in their own logic
(wrong expectations, bad arguments, API slips) before a GPU run does. What needs a real device (the compiled
kernels, CUDA events, the 0.5 s spin kernel, torch) stays in test_gpu.py alone.
"""

import importlib.util
import os

import numpy as np
import pytest

import fake_cupy
import test_cuda_glue as glue
from cuda_calls import CALL_NAMES, SYNC_CASES, SYNC_IDS

from cyctc.cuda import _backend

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def gpu(monkeypatch):
    """test_gpu.py loaded against the fake CuPy (a fresh module object, so the real one is untouched)."""
    fake_cupy.install(monkeypatch)
    monkeypatch.setattr(_backend, "loss_and_grad", glue._cpu_loss_and_grad)
    monkeypatch.setattr(_backend, "greedy_decode", glue._cpu_greedy)
    spec = importlib.util.spec_from_file_location("_test_gpu_on_fake", os.path.join(HERE, "test_gpu.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.cp is fake_cupy
    return mod


@pytest.mark.parametrize("name", CALL_NAMES)
@pytest.mark.parametrize("small_on_device", [False, True], ids=["host-lengths", "device-lengths"])
def test_public_entry_logic(gpu, name, small_on_device):
    gpu.test_public_entry_matches_cpu_bit_identical_on_repeat(name, small_on_device)


@pytest.mark.parametrize("name, small_on_device", SYNC_CASES, ids=SYNC_IDS)
def test_sync_rules_logic(gpu, monkeypatch, name, small_on_device):
    gpu.test_sync_rules(name, small_on_device, monkeypatch)


@pytest.mark.parametrize("call", ["sum", "mean", "zero_infinity", "v1_ignore_longer_collapse", "v1_merge0",
                                  "batch_cost"])
def test_variants_logic(gpu, call):
    gpu.test_public_api_variants_on_cupy(call)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("time_major", [False, True])
def test_matches_cpu_logic(gpu, dtype, time_major):
    gpu.test_public_api_on_cupy_matches_cpu(dtype, time_major)


def test_second_device_logic(gpu):
    gpu.test_public_entries_on_a_second_device()  # the fake has two devices
    gpu.test_public_api_refuses_small_arrays_on_another_device()


@pytest.mark.parametrize("dtype, lengths", [("float32", (1422, 1423)), ("float64", (706, 707))])
def test_chain_boundary_logic(gpu, monkeypatch, dtype, lengths):
    monkeypatch.setattr(_backend, "get_function", lambda dev, src, name: fake_cupy.Kernel(name))
    gpu.test_chain_shared_memory_at_the_boundary_lengths(dtype, lengths)
