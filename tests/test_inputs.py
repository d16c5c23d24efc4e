"""Measured models are deterministic and see realistic inputs and activations; form checks
can fail; the cold call is the first call."""

from __future__ import annotations

import copy
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import archbench
from archbench.errors import ArchbenchError
from archbench.forms import prepare_form
from archbench.inputs import (
    CALIBRATION_INPUTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    calibrate_batchnorm,
    calibration_batches,
    sample_input,
)
from archbench.profilers.latency import LatencyConfig
from archbench.settings import RunSettings

QUICK = LatencyConfig(warmup_calls=2, warmup_s=0.0, min_samples=10, min_time_s=0.05, max_time_s=1.0, retries=0)


def _relative_change(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The smallest, over outputs, of max |a - b| / max |a|: how much the least sensitive output moves."""
    return min(((u - v).abs().max() / u.abs().max()).item() for u, v in zip(a, b, strict=True))


# -- inputs ---------------------------------------------------------------------------------


def test_image_input_is_the_normalised_photograph() -> None:
    x = sample_input(2, 96)
    assert x.shape == (2, 3, 96, 96) and x.dtype == torch.float32 and torch.equal(x[0], x[1])
    pixels = x[0] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # back in [0, 1]: a real image, normalised
    # neighbouring pixels are correlated: steps between them are small against the spread
    # (for independent noise the mean step is 2 / sqrt(pi) = 1.13 standard deviations)
    assert 0.05 < pixels.std() < 0.45 and pixels.std() > 2 * pixels.diff(dim=-1).abs().mean()
    assert torch.equal(sample_input(1, 96), sample_input(1, 96))  # deterministic
    assert not torch.equal(sample_input(1, 96, variant=1), x[:1])  # another crop


def test_random_and_zeros_inputs() -> None:
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(sample_input(1, 32, kind="random"), torch.randn(1, 3, 32, 32, generator=generator))
    assert not torch.equal(sample_input(1, 32, kind="random", variant=1), sample_input(1, 32, kind="random"))
    assert sample_input(3, 32, kind="zeros").abs().sum() == 0
    with pytest.raises(ArchbenchError, match="unknown input 'photo'; choose from image, random, zeros"):
        sample_input(1, 32, kind="photo")
    with pytest.raises(ArchbenchError, match="unknown input 'photo'"):
        RunSettings(variants=("esnet_s",), input="photo")


def test_runs_recorded_before_inputs_were_a_setting_mean_random() -> None:
    recorded = RunSettings(variants=("esnet_s",)).to_json()
    del recorded["input"]
    assert RunSettings.from_json(recorded).input == "random"
    assert RunSettings(variants=("esnet_s",)).input == "image"


# -- deterministic weights ------------------------------------------------------------------


def _checksum(model: nn.Module) -> str:
    return repr(sum(float(t.double().sum()) for t in model.state_dict().values()))


def test_create_model_is_deterministic_across_processes_and_leaves_the_global_rng() -> None:
    torch.manual_seed(123)  # the caller's seed does not matter
    model = archbench.create_model("picodet_s")
    code = "import archbench, torch; m = archbench.create_model('picodet_s'); " \
           "print(repr(sum(float(t.double().sum()) for t in m.state_dict().values())))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == _checksum(model)
    assert _checksum(archbench.create_model("picodet_s", seed=1)) != _checksum(model)


def test_create_model_does_not_consume_the_callers_random_state() -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    archbench.create_model("esnet_s")
    assert torch.equal(torch.rand(3), expected)


# -- calibration and checks that can fail ---------------------------------------------------


def test_untrained_detector_outputs_ignore_the_input_until_batchnorm_is_calibrated() -> None:
    model = archbench.create_model("picodet_s")
    x, x_alt = sample_input(1, 128), sample_input(1, 128, variant=1)
    with torch.inference_mode():
        before = _relative_change(model(x), model(x_alt))
    assert before < 1e-4  # every output is the head's bias, whatever the image
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    count = calibrate_batchnorm(model, calibration_batches("image", 128))
    assert count == len(momenta) > 0
    assert not any(m.training for m in model.modules())
    assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == momenta
    with torch.inference_mode():
        after = _relative_change(model(x), model(x_alt))
    assert after > 0.05  # now every output depends on the image
    assert len(calibration_batches("image", 64)) * 4 == CALIBRATION_INPUTS


def test_form_check_reports_when_it_could_not_fail() -> None:
    untrained = archbench.create_model("picodet_s")
    x, x_alt = sample_input(1, 128), sample_input(1, 128, variant=1)
    vacuous = prepare_form("fused", untrained, x, x_alt=x_alt)
    assert vacuous.check.startswith("vacuous: output ") and "between two inputs" in vacuous.check
    calibrated = copy.deepcopy(untrained)
    calibrate_batchnorm(calibrated, calibration_batches("image", 128))
    checked = prepare_form("fused", calibrated, x, x_alt=x_alt)
    assert checked.check == "passed"
    assert 0 < checked.ref_rel_err <= checked.tolerance == max(1e-5, 10 * checked.eager_ref_rel_err)


def test_registered_variants_are_calibrated_when_timed_and_a_users_module_is_not() -> None:
    frame = archbench.profile(["shufflenetv2_x0_5", nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))],
                              resolutions=(64,), metrics=("latency",), input="zeros", latency=QUICK)
    assert list(frame["input"]) == ["zeros", "zeros"]
    # stem 1 + three stride-2 blocks x 5 + (3 + 7 + 3) stride-1 blocks x 3 BatchNorms = 55
    assert frame["model_state"][0] == "seed 0; BatchNorm statistics of 55 layers from 8 zeros inputs at 256 px"
    assert frame["model_state"][1] == "as given"
    static = archbench.profile("shufflenetv2_x0_5", resolutions=(64,), metrics=("params",))
    assert static["model_state"][0] == "seed 0"  # counting needs no calibration


# -- the cold call --------------------------------------------------------------------------


class SlowFirstCall(nn.Module):
    """Sleeps on its first call only, and counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            time.sleep(0.06)
        return self.conv(x)


@pytest.mark.parametrize("form", ["eager", "fused", "channels_last"])
def test_cold_is_the_first_call_on_the_prepared_form(form: str) -> None:
    model = SlowFirstCall().eval()
    prepared = prepare_form(form, model, torch.randn(1, 3, 16, 16))
    assert prepared.cold_ms >= 60  # the prepared copy's first call is the one timed as cold ...
    assert model.calls == 1  # ... and the caller's model ran only once, for the reference outputs


def test_latency_cold_column_is_the_first_call() -> None:
    # sleep never returns early, so only the sleeping first call can give 60 ms or more
    frame = archbench.profile(SlowFirstCall(), resolutions=(32,), metrics=("latency",), latency=QUICK)
    assert frame["latency_ms_cold"][0] >= 60
