"""The per-layer profile: columns, hand-computed bytes and intensity, roofline arithmetic,
own-time rows for work between modules, grouping, and ``show --latency``. No timing is asserted."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import archbench
from archbench.errors import ArchbenchError
from archbench.machine import Ceilings
from archbench.models.layers import SqueezeExcite
from archbench.profilers.layer_views import (
    KIND_DATA,
    KIND_DENSE,
    KIND_DEPTHWISE,
    KIND_NORM_ACT,
    KIND_POOL,
    KIND_SE,
    LAYER_COLUMNS,
    add_roofline,
    group_layers,
    leaf_kind,
)
from archbench.profilers.layers import profile_layers

CEILINGS = Ceilings(peak_gflops=100.0, bandwidth_gbps=10.0, device="cpu", device_model="test", threads=1,
                    torch_version=torch.__version__, method="fixed for the test", measured_at="2026-01-01T00:00:00")
F32 = 4


class Tiny(nn.Module):
    """1x1 conv -> ReLU -> depthwise 3x3 stride 2 -> ReLU (the same module) -> SE; concat."""

    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(16, 32, 1, bias=False)
        self.act = nn.ReLU()
        self.dw = nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=False)
        self.se = SqueezeExcite(32, reduction=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.dw(self.act(self.pw(x))))
        return torch.cat([a, self.se(a)], dim=1)


@pytest.fixture(scope="module")
def tiny() -> pd.DataFrame:
    # a module's input is (B, 3, H, W) in profile_layers; Tiny takes 16 channels, so wrap it
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = Tiny()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x.repeat(1, 6, 1, 1)[:, :16])

    return profile_layers(Wrapped(), 8, samples=3, ceilings=CEILINGS)


def rows(df: pd.DataFrame) -> dict[str, dict[str, object]]:
    return {str(r["module"]): r for r in df.to_dict("records")}


def test_columns_order_and_attrs(tiny: pd.DataFrame) -> None:
    for column in ("module", "type", "part", "calls", "latency_ms", "latency_share", "macs", "flops", "bytes_moved",
                   "intensity", "attained_gflops", "roof_gflops", "pct_of_roof", "bound"):
        assert column in tiny.columns
    assert list(tiny.columns) == list(LAYER_COLUMNS)
    assert list(tiny["module"]) == [
        "body.pw", "body.act", "body.dw", "body.se.pool", "body.se.reduce", "body.se.relu", "body.se.expand",
        "body.se.gate", "body.se.(own)", "body.(own)", "(own)",
    ]
    for key in ("forward_ms", "layers_sum_ms", "reconciliation", "peak_gflops", "bandwidth_gbps", "method",
                "ceilings", "bytes_convention"):
        assert key in tiny.attrs
    assert tiny.attrs["forward_ms"] > 0
    assert tiny.attrs["layers_sum_ms"] == pytest.approx(tiny["latency_ms"].sum())
    assert tiny.attrs["reconciliation"] == pytest.approx(tiny.attrs["layers_sum_ms"] / tiny.attrs["forward_ms"])
    assert tiny["latency_share"].sum() == pytest.approx(1.0)
    assert (tiny["latency_ms"] >= 0).all()
    assert set(tiny["bound"]) <= {"compute", "memory"}


def test_calls_of_one_module_are_aggregated(tiny: pd.DataFrame) -> None:
    act = rows(tiny)["body.act"]
    assert act["calls"] == 2
    # both calls' traffic: 32x8x8 in + out, then 32x4x4 in + out
    assert act["bytes_moved"] == (2 * 32 * 8 * 8 + 2 * 32 * 4 * 4) * F32


def test_pointwise_conv_bytes_and_intensity(tiny: pd.DataFrame) -> None:
    pw = rows(tiny)["body.pw"]
    expected_bytes = 16 * 8 * 8 * F32 + 32 * 8 * 8 * F32 + 32 * 16 * F32
    assert pw["bytes_moved"] == expected_bytes == 14336
    assert pw["macs"] == 32 * 16 * 8 * 8
    assert pw["flops"] == 2 * pw["macs"]
    assert pw["intensity"] == pytest.approx(2 * 32 * 16 * 64 / 14336)
    assert pw["kind"] == KIND_DENSE and pw["type"] == "Conv2d"


def test_depthwise_stride2_bytes_and_intensity(tiny: pd.DataFrame) -> None:
    dw = rows(tiny)["body.dw"]
    expected_bytes = 32 * 8 * 8 * F32 + 32 * 4 * 4 * F32 + 32 * 9 * F32
    assert dw["bytes_moved"] == expected_bytes == 11392
    assert dw["macs"] == 32 * 4 * 4 * 9
    assert dw["intensity"] == pytest.approx(2 * 4608 / 11392)
    assert dw["kind"] == KIND_DEPTHWISE


def test_se_block_bytes(tiny: pd.DataFrame) -> None:
    r = rows(tiny)
    assert r["body.se.pool"]["bytes_moved"] == (32 * 16 + 32) * F32
    assert r["body.se.reduce"]["bytes_moved"] == (32 + 8 + 8 * 32 + 8) * F32  # in, out, weight, bias
    assert r["body.se.reduce"]["macs"] == 32 * 8
    assert r["body.se.relu"]["bytes_moved"] == (8 + 8) * F32
    assert r["body.se.expand"]["bytes_moved"] == (8 + 32 + 32 * 8 + 32) * F32
    assert r["body.se.gate"]["bytes_moved"] == (32 + 32) * F32
    # the scaling multiply happens in SqueezeExcite.forward itself: x and scale read, product written
    assert r["body.se.(own)"]["bytes_moved"] == (32 * 16 + 32 + 32 * 16) * F32
    se_rows = [row for name, row in r.items() if name.startswith("body.se.")]
    assert {row["kind"] for row in se_rows} == {KIND_SE}
    assert sum(int(row["bytes_moved"]) for row in se_rows) == 4 * (544 + 304 + 16 + 328 + 64 + 1056)


def test_concat_is_the_parents_own_row(tiny: pd.DataFrame) -> None:
    own = rows(tiny)["body.(own)"]
    assert own["bytes_moved"] == (32 * 16 + 32 * 16 + 64 * 16) * F32  # two inputs read, the result written
    assert own["macs"] == 0 and own["intensity"] == 0
    assert own["kind"] == KIND_DATA and own["type"] == "Tiny (own)"
    assert own["bound"] == "memory"
    # the wrapper's repeat + slice: repeat copies (read 3x8x8, write 18x8x8); the slice is a view
    assert rows(tiny)["(own)"]["bytes_moved"] == (3 * 64 + 18 * 64) * F32


def test_roofline_arithmetic(tiny: pd.DataFrame) -> None:
    for row in tiny.to_dict("records"):
        intensity = float(row["intensity"])
        roof = min(CEILINGS.peak_gflops, intensity * CEILINGS.bandwidth_gbps)
        assert row["roof_gflops"] == pytest.approx(roof)
        if row["latency_ms"] > 0:
            seconds = float(row["latency_ms"]) / 1e3
            assert row["attained_gflops"] == pytest.approx(row["flops"] / seconds / 1e9)
            assert row["attained_gbps"] == pytest.approx(row["bytes_moved"] / seconds / 1e9)
            if row["bound"] == "memory":
                assert row["pct_of_roof"] == pytest.approx(100 * row["attained_gbps"] / CEILINGS.bandwidth_gbps)
            if row["flops"]:
                assert row["pct_of_roof"] == pytest.approx(100 * row["attained_gflops"] / roof)


def test_add_roofline_by_hand() -> None:
    frame = pd.DataFrame({"module": ["gemm", "copy"], "latency_ms": [1.0, 3.0], "macs": [50_000_000, 0],
                          "bytes_moved": [1_000_000, 3_000_000]})
    out = add_roofline(frame, peak_gflops=100.0, bandwidth_gbps=10.0).set_index("module")
    assert out.loc["gemm", "intensity"] == 100.0  # 1e8 FLOPs / 1e6 B
    assert out.loc["gemm", "roof_gflops"] == 100.0 and out.loc["gemm", "bound"] == "compute"
    assert out.loc["gemm", "attained_gflops"] == pytest.approx(100.0)
    assert out.loc["gemm", "pct_of_roof"] == pytest.approx(100.0)
    assert out.loc["copy", "roof_gflops"] == 0.0 and out.loc["copy", "bound"] == "memory"
    assert out.loc["copy", "attained_gbps"] == pytest.approx(1.0)
    assert out.loc["copy", "pct_of_roof"] == pytest.approx(10.0)
    assert list(out["latency_share"]) == [0.25, 0.75]


def test_grouping_by_kind_sums_and_shares(tiny: pd.DataFrame) -> None:
    grouped = group_layers(tiny, "kind").set_index("kind")
    assert list(grouped.index) == [KIND_DENSE, KIND_DEPTHWISE, KIND_SE, KIND_NORM_ACT, KIND_DATA]
    assert grouped["layers"].sum() == len(tiny)
    assert grouped.loc[KIND_SE, "layers"] == 6
    assert grouped.loc[KIND_SE, "macs"] == 2 * 256
    assert grouped["latency_ms"].sum() == pytest.approx(tiny["latency_ms"].sum())
    for share in ("latency_share", "macs_share", "bytes_share"):
        assert grouped[share].sum() == pytest.approx(1.0)
    assert grouped.loc[KIND_DENSE, "macs_share"] == pytest.approx(32768 / tiny["macs"].sum())
    assert grouped.loc[KIND_DATA, "bytes_moved"] == 8192 + (3 * 64 + 18 * 64) * F32
    assert grouped.attrs["forward_ms"] == tiny.attrs["forward_ms"]
    with pytest.raises(ArchbenchError, match="unknown grouping"):
        group_layers(tiny, "colour")


def test_leaf_kinds() -> None:
    assert leaf_kind(nn.Conv2d(8, 8, 3, groups=8)) == KIND_DEPTHWISE
    assert leaf_kind(nn.Conv2d(8, 16, 3, groups=2)) == KIND_DENSE
    assert leaf_kind(nn.BatchNorm2d(8)) == KIND_NORM_ACT
    assert leaf_kind(nn.Hardswish()) == KIND_NORM_ACT
    assert leaf_kind(nn.MaxPool2d(3)) == KIND_POOL
    assert leaf_kind(nn.Upsample(scale_factor=2)) == KIND_DATA


@pytest.fixture(scope="module")
def shufflenet(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return profile_layers("shufflenetv2_x0_5", 64, samples=3, ceilings=CEILINGS)


def test_registered_variant_parts_stages_and_data_movement(shufflenet: pd.DataFrame) -> None:
    df = shufflenet
    assert df.attrs["variant"] == "shufflenetv2_x0_5"
    assert set(df["bound"]) <= {"compute", "memory"}
    assert df["module"].is_unique
    assert df["macs"].sum() == archbench.profile("shufflenetv2_x0_5", resolutions=(64,))["macs"].iloc[0]
    # the channel shuffle and concat of every block are its own row, classed as data movement
    own = df[df["module"].str.endswith(".(own)")]
    assert len(own) > 0 and (own[own["part"] != "(model)"]["kind"] == KIND_DATA).any()
    assert (own["bytes_moved"] > 0).any()
    by_stage = group_layers(df, "stage")
    assert list(by_stage.columns[:2]) == ["part", "stage"]
    assert by_stage["latency_ms"].sum() == pytest.approx(df["latency_ms"].sum())
    by_part = group_layers(df, "part")
    assert by_part["layers"].sum() == len(df)


def test_unsupported_form_is_an_error() -> None:
    with pytest.raises(ArchbenchError, match="keeps the modules"):
        profile_layers(nn.Conv2d(3, 4, 1), 8, form="onnxruntime", samples=3, ceilings=CEILINGS)


def test_forms_keep_the_callers_module_unchanged() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    df = profile_layers(model, 8, form="fused", samples=3, ceilings=CEILINGS)
    assert isinstance(model[1], nn.BatchNorm2d)  # folded on a copy
    assert "Identity" in set(df["type"])
    assert math.isfinite(df.attrs["forward_ms"])
    assert "forward" not in model[0].__dict__  # the timing wrappers are gone


def test_show_latency_prints_the_table(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import archbench.machine as machine
    from archbench.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(machine, "measure_ceilings", lambda device, threads: (100.0, 10.0, "fake"))
    code = main(["show", "shufflenetv2_x0_5", "-r", "64", "--latency", "--top", "5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "per-layer latency (top 5 of" in out and "latency (ms)" in out and "% of roof" in out
    code = main(["show", "shufflenetv2_x0_5", "-r", "64", "--latency", "--by", "kind"])
    out = capsys.readouterr().out
    assert code == 0 and "latency by kind" in out and "depthwise conv" in out and "MACs %" in out


def test_own_kinds() -> None:
    from archbench.profilers.layer_views import KIND_ELEMENTWISE, KIND_OTHER, own_kind

    assert own_kind({"data_movement": 10, "elementwise": 5}) == KIND_DATA
    assert own_kind({"elementwise": 10}) == KIND_ELEMENTWISE  # a residual add
    assert own_kind({"macs": 1, "data_movement": 10}) == KIND_DENSE
    assert own_kind({}) == KIND_OTHER  # views or call overhead only


def test_chunk_concat_and_channel_shuffle_bytes() -> None:
    from archbench.models.layers import channel_shuffle

    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre = nn.Conv2d(3, 8, 1, bias=False)
            self.conv = nn.Conv2d(4, 4, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.pre(x).chunk(2, dim=1)  # views: nothing moved
            y = torch.cat([a, self.conv(b)], dim=1)  # reads 2 x 4x8x8, writes 8x8x8
            return channel_shuffle(y, 2)  # view + transpose, then reshape copies: reads and writes 8x8x8

    df = profile_layers(Split(), 8, samples=3, ceilings=CEILINGS)
    own = rows(df)["(own)"]
    assert own["bytes_moved"] == (4 * 64 + 4 * 64 + 8 * 64 + 8 * 64 + 8 * 64) * F32
    assert own["kind"] == KIND_DATA
    assert rows(df)["conv"]["bytes_moved"] == (4 * 64 + 4 * 64 + 16) * F32  # a chunk's view is read as 4x8x8


def test_tensors_without_storage_count_once_by_identity() -> None:
    """A wrapper subclass whose ``untyped_storage`` raises is still counted, once per tensor."""
    from archbench.profilers.layers import _storage_bytes

    class NoStorage(torch.Tensor):
        def untyped_storage(self) -> torch.UntypedStorage:  # type: ignore[override]
            raise NotImplementedError("no storage here")

    a = torch.zeros(4, 8).as_subclass(NoStorage)
    b = torch.zeros(2, 8).as_subclass(NoStorage)
    assert _storage_bytes([a, a, b]) == (4 * 8 + 2 * 8) * 4
    plain = torch.zeros(4, 8)
    assert _storage_bytes([plain, plain.view(8, 4)]) == 4 * 8 * 4  # views of one storage count once
