"""The extensible core: component registries, the metric catalog, settings validated once,
and one cell pipeline behind ``archbench run`` and ``archbench.profile``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import archbench
from archbench.components import ComponentRegistry
from archbench.errors import ArchbenchError
from archbench.metrics import (
    METRIC_CATALOG,
    aggregate_repeats,
    column,
    column_order,
    conventions_for,
    is_done,
    judged,
    metric_of,
)
from archbench.models.heads import HEADS
from archbench.models.layers import ACTIVATIONS, make_activation
from archbench.models.necks import NECKS
from archbench.registry import registry_with
from archbench.results import load
from archbench.runner import Runner
from archbench.settings import RunSettings
from tests.conftest import n_params

REPORTS = Path(__file__).resolve().parent.parent / "reports"

# -- registries of one shape ------------------------------------------------------------


def test_component_registry_rejects_duplicates_and_names_choices() -> None:
    colours = ComponentRegistry[int]("colour")
    colours.register("red", 1)

    @colours.register("green")
    def green() -> int:
        return 2

    assert colours.names() == ("red", "green") and colours.get("green") is green and "red" in colours
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        colours.register("red", 3)
    with pytest.raises(ArchbenchError, match="unknown colour 'blue'; choose from red, green"):
        colours.get("blue")


def test_necks_heads_activations_share_the_registry_shape() -> None:
    assert NECKS.names() == ("csp_pan", "yolov5lite_pan", "fpn")
    assert HEADS.names() == ("pico_head", "yolo_detect")
    assert "leaky_relu_0.1" in ACTIVATIONS and make_activation("leaky_relu_0.1").negative_slope == 0.1
    with pytest.raises(ArchbenchError, match="unknown activation 'gelu'; choose from hardswish, relu"):
        make_activation("gelu")
    with pytest.raises(ArchbenchError, match="unknown neck 'bifpn'; choose from csp_pan"):
        archbench.create_model("picodet_s", neck="bifpn")


def test_detector_builds_its_backbone_from_the_registry_it_came_from(tmp_path: Path) -> None:
    """A detector over a user's own backbone (``--specs``) builds from the user's registry."""
    path = tmp_path / "mine.toml"
    path.write_text('[[variant]]\nname = "esnet_tiny"\nfamily = "mine"\nkind = "backbone"\nbuilder = "esnet"\n'
                    'args = { scale = 0.5 }\n'
                    '[[variant]]\nname = "pico_tiny"\nfamily = "mine"\nkind = "detector"\nbuilder = "detector"\n'
                    'args = { backbone = "esnet_tiny", neck = "csp_pan", head = "pico_head", neck_channels = 64 }\n')
    registry = registry_with([path])
    detector = archbench.create_model("pico_tiny", registry=registry)
    backbone = archbench.create_model("esnet_tiny", registry=registry)
    assert n_params(detector.backbone) == n_params(backbone)
    with pytest.raises(ArchbenchError, match="unknown variant 'esnet_tiny'"):
        archbench.create_model("esnet_tiny")
    with pytest.raises(ArchbenchError, match="unknown argument 'create_variant'"):
        archbench.create_model("picodet_s", create_variant=archbench.create_model)


# -- the metric catalog ---------------------------------------------------------------------


def test_every_column_of_the_committed_runs_is_declared() -> None:
    """A measured column the catalog does not know would be invisible to compare and renderers."""
    for run in ("esnet-vs-shufflev2", "picodet-forms"):
        result = load(REPORTS / run)
        for record in result.records:
            for name in record:
                if name in ("variant", "resolution", "batch_size", "device", "form", "status", "reason"):
                    continue
                assert column(name) is not None, (run, name)


def test_catalog_judges_counts_exact_and_latency_noisy() -> None:
    assert [judged(c) for c in ("params", "macs_neck", "pool_elems", "act_peak_bytes")] == ["exact"] * 4
    assert judged("latency_ms_median") == "noisy" and column("latency_ms_median").noise == (  # type: ignore[union-attr]
        "latency_ms_spread", "latency_ms_iqr")
    assert [judged(c) for c in ("latency_ms_p90", "fvcore_total", "cuda_max_allocated_bytes", "form_note")] == [
        "info"] * 4
    assert metric_of("params_backbone") == "params" and metric_of("flops") == "macs"
    assert metric_of("thop_unsupported") == "counters" and metric_of("nonsense") is None
    assert [m.name for m in METRIC_CATALOG] == ["params", "macs", "memory", "latency", "layers"]
    assert judged("bytes_moved") == "exact" and metric_of("bytes_moved") == "layers"
    assert judged("layers_sum_ms") == "info"  # a per-layer sum: read beside latency, never gated


def test_column_order_follows_the_catalog_with_unknown_columns_last() -> None:
    shuffled = ["latency_ms_median", "zzz_custom", "act_peak_bytes", "macs_head", "params", "macs"]
    assert column_order(shuffled) == ["params", "macs", "macs_head", "act_peak_bytes", "latency_ms_median",
                                      "zzz_custom"]


def test_conventions_and_done_come_from_the_catalog() -> None:
    assert list(conventions_for(("params", "macs", "memory", "latency"))) == [
        "params", "macs", "flops", "act_peak_bytes", "latency_ms"]
    assert list(conventions_for(("macs",), ("thop",))) == ["macs", "flops", "thop_total"]
    ok = {"status": "ok", "params": 1}
    assert is_done(ok, ("params",)) and not is_done(ok, ("params", "latency"))
    assert is_done({**ok, "latency_ms_median": 1.0}, ("latency",))
    assert is_done({"status": "failed"}, ("latency",))


def test_repeats_aggregate_every_latency_column_as_declared() -> None:
    rows = [{"latency_ms_median": m, "latency_ms_min": m - 1, "latency_n": 10, "latency_noise": noise,
             "form_max_rel_err": err, "form_note": "note", "threads": 1}
            for m, noise, err in ((10.0, "ok", 1e-7), (14.0, "noisy", 3e-7), (11.0, "contended+noisy", 2e-7))]
    agg = aggregate_repeats(rows)
    assert agg["latency_ms_median"] == 11.0 and agg["latency_ms_spread"] == 4.0 and agg["latency_ms_min"] == 9.0
    assert agg["latency_n"] == 30 and agg["latency_noise"] == "contended+noisy" and agg["latency_repeats"] == 3
    assert agg["form_max_rel_err"] == 3e-7 and agg["form_note"] == "note" and agg["threads"] == 1
    assert list(agg)[:2] == ["latency_ms_median", "latency_ms_spread"]


# -- settings, validated once -------------------------------------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    ({"variants": ()}, "nothing to measure"),
    ({"resolutions": (320, 0)}, "resolution must be a positive integer, got 0"),
    ({"resolutions": (True,)}, "resolution must be a positive integer, got True"),
    ({"batch_size": 0}, "batch size must be an integer of at least 1, got 0"),
    ({"threads": 1.5}, "threads must be an integer of at least 1, got 1.5"),
    ({"metrics": ("params", "speed")}, "unknown metric 'speed'; choose from params, macs, memory, latency"),
    ({"counters": ("flopco",)}, "unknown counter 'flopco'"),
    ({"forms": ("tensorrt",)}, "unknown form 'tensorrt'; choose from eager, fused"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"baseline": "esnet_m"}, "baseline 'esnet_m' is not among the selected variants"),
])
def test_settings_are_checked_where_they_are_made(changes: dict[str, object], message: str) -> None:
    good = RunSettings(variants=("esnet_s",))
    with pytest.raises(ArchbenchError, match=message):
        replace(good, **changes)  # type: ignore[arg-type]


def test_settings_round_trip_through_json_and_refuse_corrupt_ones() -> None:
    settings = RunSettings(variants=("esnet_s", "esnet_m"), resolutions=(320,), forms=("eager", "fused"), threads=2)
    assert RunSettings.from_json(json.loads(json.dumps(settings.to_json()))) == settings
    recorded = {**settings.to_json(), "resolutions": ["x"]}
    with pytest.raises(ArchbenchError, match=r"cannot resume: .*resolution must be a positive integer, got 'x'"):
        RunSettings.from_json(recorded)


# -- one pipeline ---------------------------------------------------------------------------


def test_profile_and_run_measure_through_the_same_cells(tmp_path: Path) -> None:
    frame = archbench.profile(["esnet_s", "shufflenetv2_x0_5"], resolutions=(64, 96))
    result = Runner(RunSettings(variants=("esnet_s", "shufflenetv2_x0_5"), resolutions=(64, 96),
                                metrics=("params", "macs", "memory")), tmp_path).run()
    assert len(frame) == len(result.records) == 4
    for row, record in zip(frame.to_dict("records"), result.records, strict=True):
        assert {k: record[k] for k in row} == row
    assert set(result.records[0]) - set(frame.columns) == {"status", "reason"}
    assert frame.attrs["conventions"] == result.conventions
