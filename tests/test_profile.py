"""archbench.profile and archbench show: columns, conventions, published figures."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

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
    assert row["fvcore_conv_linear_agrees"] == row["thop_conv_linear_agrees"] == 1


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


# ----------------------------------------------------------------------------- no silent zero


@torch.library.custom_op("archbench_test::demo_mix", mutates_args=())
def demo_mix(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A custom op archbench has no rule for: a matrix product it cannot see into."""
    return x @ w


@demo_mix.register_fake
def _(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], w.shape[-1])


E = 8


class Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(E, E))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return demo_mix(t, self.weight)


class Uncounted(nn.Module):
    """A patch embedding (counted), a custom matmul (no rule) and a cumsum (no rule, MAC-free)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, E, 4, stride=4)
        self.mixer = Mixer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)  # (B, (side / 4)^2, E)
        return self.mixer(t).cumsum(1)


def build_uncounted() -> nn.Module:
    return Uncounted()


def uncounted_macs(side: int, batch: int = 1) -> tuple[int, int]:
    """(the patch conv's MACs, the custom op's MACs) by hand: tokens x E x E for the latter."""
    tokens = (side // 4) ** 2
    return batch * E * tokens * 3 * 16, batch * tokens * E * E


MIX, CUMSUM = "archbench_test.demo_mix.default", "aten.cumsum.default"


def test_profile_lists_and_warns_about_uncounted_ops_once() -> None:
    from archbench.profilers.compute import UncountedOpWarning

    with pytest.warns(UncountedOpWarning) as caught:
        df = archbench.profile(Uncounted(), resolutions=(16, 32), metrics=("macs",))
    # once per op and profile call, not per resolution; the MAC-free cumsum is not warned about
    assert [str(w.message) for w in caught if w.category is UncountedOpWarning] == [
        f"Uncounted @ 16: {MIX}: 1 call in mixer: no counting rule, so its MACs (if any) are not in "
        "'macs'; count it with archbench.profilers.op_rules.register_op_rule"
    ]
    assert list(df["macs"]) == [uncounted_macs(16)[0], uncounted_macs(32)[0]]
    assert set(df["unclassified_ops"]) == {f"{MIX},{CUMSUM}"}
    assert df.attrs["unclassified_ops"] == [
        {"variant": "Uncounted", "resolution": side, "batch_size": 1, "op": op, "calls": 1,
         "modules": [module], "may_hide_macs": op == MIX}
        for side in (16, 32) for op, module in ((MIX, "mixer"), (CUMSUM, ""))
    ]


def test_profile_of_a_fully_counted_model_has_an_empty_list() -> None:
    df = archbench.profile(nn.Sequential(nn.Conv2d(3, 4, 3)), resolutions=(8,), metrics=("macs",))
    assert df.attrs["unclassified_ops"] == []


@pytest.fixture
def uncounted_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "uncounted.toml"
    spec.write_text(
        '[[family]]\nname = "demo"\ndescription = "test models"\n\n'
        '[[variant]]\nname = "uncounted_demo"\nfamily = "demo"\nkind = "backbone"\n'
        'builder = "tests.test_profile:build_uncounted"\ndescription = "a custom op without a rule"\n'
    )
    return spec


def test_show_and_report_list_uncounted_ops(uncounted_spec: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--specs", str(uncounted_spec), "show", "uncounted_demo", "-r", "16"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("ops without a counting rule"):]
    assert MIX in table and CUMSUM in table and "mixer" in table and "(model)" in table
    rows = [line.split("│") for line in table.splitlines() if MIX in line or CUMSUM in line]
    assert [[cell.strip() for cell in row[1:-1]] for row in rows] == [
        [MIX, "1", "mixer", "yes"], [CUMSUM, "1", "(model)", "no"],
    ]

    out_dir = tmp_path / "run"
    assert main(["--specs", str(uncounted_spec), "run", "--variants", "uncounted_demo", "--resolutions", "16",
                 "--metrics", "params,macs", "--out", str(out_dir)]) == 0
    report = (out_dir / "report.md").read_text()
    notes = report[report.index("## Notes"):]
    assert (f"- `uncounted_demo` @ 16 px: `{MIX}` has no counting rule (counted as 0): 1 call(s) in `mixer` "
            "(**may hide MACs**)") in notes
    assert f"`{CUMSUM}` has no counting rule (counted as 0): 1 call(s) in `(model)`" in notes


@pytest.fixture
def mix_rule() -> Iterator[None]:
    from archbench.profilers.op_rules import register_op_rule, unregister_op_rule

    # a matrix product: output elements x the reduced dimension
    register_op_rule("demo_mix", "macs", lambda args, out: out.numel() * args[0].shape[-1])
    try:
        yield
    finally:
        unregister_op_rule("demo_mix")


def test_a_registered_rule_counts_everywhere(mix_rule: None, uncounted_spec: Path, request: pytest.FixtureRequest,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from archbench.expectations import measure_model
    from archbench.profilers.compute import UncountedOpWarning

    expected = {side: sum(uncounted_macs(side)) for side in (16, 32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncountedOpWarning)
        df = archbench.profile(Uncounted(), resolutions=(16, 32), metrics=("macs",))
    assert list(df["macs"]) == [expected[16], expected[32]]
    assert df.attrs["unclassified_ops"] == [
        {"variant": "Uncounted", "resolution": side, "batch_size": 1, "op": CUMSUM, "calls": 1,
         "modules": [""], "may_hide_macs": False} for side in (16, 32)
    ]
    # archbench expect's meta-device pass
    by_resolution = measure_model(Uncounted(), (16, 32))["by_resolution"]
    assert {int(side): cell["macs"] for side, cell in by_resolution.items()} == expected
    # archbench show
    assert main(["--specs", str(uncounted_spec), "show", "uncounted_demo", "-r", "32"]) == 0
    assert f"{expected[32]:,}" in capsys.readouterr().out
    # the pytest plugin's fixture (when the plugin is loaded, as it is by default)
    try:
        plugin_profile = request.getfixturevalue("archbench_profile")
    except pytest.FixtureLookupError:
        pytest.skip("the archbench pytest plugin is not loaded")
    assert plugin_profile(Uncounted(), resolution=32, metrics=("macs",))["macs"] == expected[32]
