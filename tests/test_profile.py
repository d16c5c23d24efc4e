"""archbench.profile and archbench show: columns, conventions, published figures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archbench
import archbench.runner as runner
from archbench.cli import main

# PP-PicoDet 2021 model zoo "FLOPs" (G), about 2 x MACs (see docs/reference.md section 8.1).
PUBLISHED_GFLOPS = {
    "picodet_s": {320: 0.73, 416: 1.24},
    "picodet_m": {320: 1.48, 416: 2.50},
    "picodet_l": {320: 2.23, 416: 3.76, 640: 8.91},
}
REQUIRED_COLUMNS = ["variant", "resolution", "batch_size", "device", "params", "param_bytes", "macs", "flops",
                    "act_peak_bytes"]


def test_profile_picodet_s_three_rows_with_units_in_columns() -> None:
    df = archbench.profile("picodet_s")
    assert list(df["resolution"]) == [320, 416, 640]
    assert set(REQUIRED_COLUMNS) <= set(df.columns)
    assert (df["flops"] == 2 * df["macs"]).all()
    assert (df["params"] == 992_715).all() and (df["param_bytes"] == 4 * 992_715).all()
    assert (df["params_backbone"] + df["params_neck"] + df["params_head"] == df["params"]).all()
    assert (df["macs_backbone"] + df["macs_neck"] + df["macs_head"] == df["macs"]).all()
    assert df.attrs["environment"]["torch"] == torch.__version__
    assert "2 x macs" in df.attrs["conventions"]["flops"]


@pytest.mark.parametrize("name", PUBLISHED_GFLOPS)
def test_picodet_flops_within_5_percent_of_published(name: str) -> None:
    published = PUBLISHED_GFLOPS[name]
    df = archbench.profile(name, resolutions=tuple(published), metrics=("macs",))
    ratios = [row.flops / 1e9 / published[row.resolution] for row in df.itertuples()]
    # measured: S 0.962/0.957, M 0.968/0.969, L 0.973/0.975/0.973 (published = 2.05-2.09 x MACs)
    assert all(0.95 <= r <= 1.05 for r in ratios), ratios


def test_batch_scales_macs_and_activations_not_params() -> None:
    one, two = (archbench.profile("esnet_s", (320,), batch_size=b).iloc[0] for b in (1, 2))
    assert two["macs"] == 2 * one["macs"] and two["params"] == one["params"]
    assert two["act_peak_bytes"] == 2 * one["act_peak_bytes"]
    assert two["input_bytes"] == 2 * 3 * 320 * 320 * 4


def test_any_user_module() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    row = archbench.profile(model, resolutions=(16,), metrics=("params", "macs")).iloc[0]
    assert row["variant"] == "Sequential"
    assert row["params"] == 3 * 8 * 9 + 8 + 8 * 2 + 2
    assert row["macs"] == 16 * 16 * 8 * 27 + 8 * 2


def test_counting_with_every_backend_leaves_model_unchanged() -> None:
    model = archbench.create_model("shufflenetv2_x0_5")
    keys = list(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    row = archbench.profile(model, (224,), counters=("fvcore", "thop")).iloc[0]
    assert list(model.state_dict()) == keys
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert row["fvcore_conv_linear_macs"] == row["macs"] and row["thop_conv_linear_macs"] == row["macs"]


def test_sweep_builds_each_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = runner.create_model
    monkeypatch.setattr(runner, "create_model", lambda name, **kw: calls.append(name) or original(name, **kw))
    archbench.profile(["esnet_s", "shufflenetv2_x0_5"], metrics=("params",))
    assert calls == ["esnet_s", "shufflenetv2_x0_5"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": ("params", "speed")}, "unknown metric 'speed'; choose from params, macs, memory, latency"),
        ({"resolutions": (330,)}, "picodet_s cannot take resolution 330: it must be a multiple of the largest backbone stride, 32 \\(nearest: 320\\)"),
        ({"resolutions": (0,)}, "resolution must be a positive integer, got 0"),
        ({"batch_size": 0}, "batch size must be an integer of at least 1, got 0"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"counters": ("ptflops",)}, "unknown counter 'ptflops'"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(archbench.ArchbenchError, match=message):
        archbench.profile("picodet_s", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(archbench.ArchbenchError, match="CUDA is not available"):
        archbench.profile("esnet_s", device="cuda")


def test_show_prints_parts_and_conventions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "picodet_m", "--resolution", "416", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    for text in ("picodet_m @ 416x416", "2,152,554", "1,211,289,408", "backbone", "stage3", "neck", "head",
                 "exactly 2 x macs", "1x112x52x52 (+3 more)"):
        assert text in out


def test_show_bad_resolution_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "picodet_s", "-r", "100"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "multiple of the largest backbone stride, 32" in err
