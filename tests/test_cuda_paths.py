"""CUDA paths: what can be checked without a GPU (device selection, contexts, providers,
precision policy, sizing) with stand-ins for torch.cuda, and the real thing on a GPU
(``-m cuda``; ``nox -s cuda`` runs these and a short ``archbench run --device cuda``)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

import archbench
import archbench.devices as devices
import archbench.environment as environment_module
from archbench import forms
from archbench.inputs import sample_input
from archbench.profilers.latency import LatencyConfig
from archbench.runner import Runner
from archbench.settings import RunSettings

QUICK = LatencyConfig(warmup_calls=2, warmup_s=0.0, min_samples=10, min_time_s=0.05, max_time_s=1.0, retries=0)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def two_fake_gpus(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """torch.cuda as a machine with two GPUs would answer; records which device contexts are entered."""
    entered: list[int] = []

    @contextmanager
    def device(index: int) -> Iterator[None]:
        entered.append(index)
        yield

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: f"Fake GPU {index}")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (2**30 if index == 1 else 2**40, 2**41))
    return entered


def test_device_selection_names_the_gpu_asked_for(two_fake_gpus: list[int]) -> None:
    assert devices.check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(archbench.ArchbenchError, match="cuda:2: this machine has 2 CUDA device"):
        devices.check_device("cuda:2")
    assert devices.cuda_index(torch.device("cuda:1")) == 1 and devices.cuda_index(torch.device("cuda")) == 0
    with devices.on_device(torch.device("cuda:1")):
        pass
    with devices.on_device(torch.device("cpu")):
        pass
    assert two_fake_gpus == [1]  # cuda:1's context, and none for the CPU


def test_environment_records_the_gpu_used_and_its_precision(two_fake_gpus: list[int]) -> None:
    env = environment_module.environment(1, "cuda:1", tf32=False)
    assert env["gpu_index"] == 1 and env["gpu_model"] == "Fake GPU 1"
    assert env["cudnn_tf32"] is False and env["cuda_matmul_tf32"] is False
    assert "gpu_model" not in environment_module.environment(1, "cpu")


def test_onnxruntime_runs_on_the_gpu_asked_for() -> None:
    assert forms.onnxruntime_providers(torch.device("cuda:1")) == [
        ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert forms.onnxruntime_providers(torch.device("cpu")) == ["CPUExecutionProvider"]


def test_precision_policy_is_explicit_and_restored() -> None:
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    for tf32 in (True, False):
        with devices.precision_policy(tf32):
            assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_half_forms_convert_weights_and_input_once() -> None:
    """Not autocast over float32 weights: the model a half-precision deployment runs."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    made = forms.FORMS.get("fp16").make(model, torch.randn(1, 3, 8, 8), 1)
    assert {p.dtype for p in model.parameters()} == {torch.float16} and "converted to torch.float16" in made.note
    assert forms.unavailable_reason("bf16", torch.device("cpu")) == "needs CUDA (a GPU half-precision form)"


def test_gpu_cells_are_sized_against_the_gpus_free_memory(two_fake_gpus: list[int]) -> None:
    # esnet_s at batch 64 x 640 px: about 1.5 GiB of activations; cuda:1 has 1 GiB free, CPU probe says plenty
    settings = RunSettings(variants=("esnet_s",), resolutions=(640,), batch_size=64, device="cuda:1",
                           metrics=("params",))
    runner = Runner(settings, None, memory_probe=lambda: 2**40)
    reason = runner._fits("esnet_s", 640)
    assert reason is not None and "more than 80% of the 1.00 GiB cuda:1 memory free" in reason
    assert "weights, activations and input" in reason
    assert Runner(settings, None)._fits("esnet_s", 64) is None


# -- on a GPU -------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("form", ["eager", "fused", "channels_last", "fp16", "bf16", "onnxruntime"])
def test_cuda_forms_are_checked_and_timed(form: str) -> None:
    if (why := forms.unavailable_reason(form, torch.device("cuda"))) is not None:
        pytest.skip(why)
    frame = archbench.profile("picodet_s", resolutions=(320,), device="cuda", metrics=("memory", "latency"),
                              latency=QUICK, forms=(form,))
    row = frame.iloc[0]
    assert row["device"] == "cuda" and row["latency_ms_median"] > 0 and row["cuda_max_allocated_bytes"] > 0
    if form == "eager":
        assert row["form_check"] == "reference"
    else:
        assert row["form_check"] == "passed" and row["form_ref_rel_err"] <= row["form_tolerance"]
    assert frame.attrs["environment"]["gpu_model"] == torch.cuda.get_device_name(torch.cuda.current_device())


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("tf32", [False, True])
def test_cuda_precision_policy_is_recorded_and_checks_fit_it(tf32: bool) -> None:
    result = Runner(RunSettings(variants=("shufflenetv2_x0_5",), resolutions=(320,), device="cuda",
                                metrics=("latency",), forms=("fused",), tf32=tf32, latency=QUICK), None).run()
    record = result.records[0]
    assert record["status"] == "ok", record["reason"]
    assert result.environment["cudnn_tf32"] is tf32
    # the float64 reference does not use TF32; eager's own error shows the policy
    assert not math.isnan(record["eager_ref_rel_err"])


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu_is_the_one_measured() -> None:
    frame = archbench.profile("esnet_s", resolutions=(320,), device="cuda:1", metrics=("memory", "latency"),
                              latency=QUICK)
    assert frame.attrs["environment"]["gpu_index"] == 1 and frame["cuda_max_allocated_bytes"][0] > 0
    assert sample_input(1, 32, "cuda:1").device == torch.device("cuda:1")


@pytest.mark.cuda
@needs_cuda
def test_cuda_ceilings_and_per_layer_device_time() -> None:
    """Ceilings measured on the GPU (TF32 off: an fp32 peak), and per-layer time on it: every
    row synchronised around, the rows adding up to the whole forward within the CPU bar."""
    from archbench.machine import machine_ceilings
    from archbench.profilers.layers import profile_layers

    ceilings = machine_ceilings("cuda", 1, refresh=True)
    assert ceilings.device.startswith("cuda") and ceilings.peak_gflops > 0 and ceilings.bandwidth_gbps > 0
    df = profile_layers("picodet_s", 320, device="cuda", samples=10, ceilings=ceilings)
    assert df.attrs["device"].startswith("cuda") and (df["latency_ms"] >= 0).all()
    assert int(df["macs"].sum()) == int(archbench.profile("picodet_s", resolutions=(320,)).iloc[0]["macs"])
    assert 0.5 < df.attrs["reconciliation"] < 1.5, df.attrs["reconciliation"]


@pytest.mark.cuda
@needs_cuda
def test_cuda_run_records_layers() -> None:
    settings = RunSettings(("picodet_s",), (320,), device="cuda", metrics=("macs", "latency", "layers"), latency=QUICK)
    result = Runner(settings, None, strict=True).run()
    record = result.records[0]
    assert record["layers_sum_ms"] > 0 and result.environment["ceilings"]["device"].startswith("cuda")
    assert sum(row["macs"] for row in result.layers) == record["macs"]
