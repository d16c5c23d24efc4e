"""The exact-expectations gate: every variant's params, MACs, activation peak and output
shapes against the committed ``expectations/variants.json``.

``test_committed_expectations_match`` is the test that fails the default run when an
architecture changes; its message lists every difference, old -> new. If the change is
intended, run ``archbench expect --update`` and commit the file with the change.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import archbench
from archbench import expectations
from archbench.errors import ArchbenchError
from archbench.expectations import (
    default_expectations_path,
    diff_expectations,
    expect_command,
    load_expectations,
    measure_expectations,
    measure_model,
    measure_variant,
    write_expectations,
)
from archbench.registry import default_registry

# Variants whose meta measurements are compared with CPU values: between them they use
# every op the shape-only meta kernels replace (batch norm, ReLU, Hardswish, Hardsigmoid,
# SiLU, LeakyReLU) and every kind of model (backbone, classifier form, detectors).
META_VS_CPU = ("esnet_s", "shufflenetv2_x0_5", "picodet_shufflenetv2", "picodet_yolov5lite")


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    """Every registered variant at 320/416/640, measured on the meta device (~10 s)."""
    return measure_expectations()


def test_committed_expectations_match(measured: dict[str, Any]) -> None:
    path = default_expectations_path()
    lines = diff_expectations(load_expectations(path), measured)
    assert not lines, (
        f"{len(lines)} difference(s) from {path} (expected -> measured):\n  "
        + "\n  ".join(lines)
        + "\nIf the change is intended, run `archbench expect --update` and commit the file."
    )


def test_expectations_cover_every_registered_variant(measured: dict[str, Any]) -> None:
    assert sorted(measured["variants"]) == sorted(archbench.list_variants())
    for entry in measured["variants"].values():
        assert sorted(entry["by_resolution"]) == ["320", "416", "640"]


def test_a_changed_model_fails_with_old_and_new_values(measured: dict[str, Any]) -> None:
    changed = copy.deepcopy(measured)
    changed["variants"]["esnet_s"] = measure_variant("esnet_s", se=False)
    old, new = measured["variants"]["esnet_s"], changed["variants"]["esnet_s"]
    lines = diff_expectations(measured, changed)

    assert new["params"] < old["params"]
    drop = (new["params"] - old["params"]) / old["params"] * 100
    assert f"esnet_s: params {old['params']:,} -> {new['params']:,} ({drop:+.2f}%)" in lines
    macs_320 = old["by_resolution"]["320"]["macs"], new["by_resolution"]["320"]["macs"]
    assert any(line.startswith(f"esnet_s @ 320: macs {macs_320[0]:,} -> {macs_320[1]:,} (") for line in lines)
    assert all(line.startswith("esnet_s") for line in lines)  # nothing else is reported


def test_a_changed_registry_spec_fails_the_gate(measured: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    registry = default_registry()
    spec = registry.get("shufflenetv2_x0_5")
    widened = dataclasses.replace(spec, args={**spec.args, "stage_channels": [56, 112, 224]})
    monkeypatch.setitem(registry._variants, spec.name, widened)  # as if variants/*.toml had changed
    actual = measure_expectations(["shufflenetv2_x0_5"], resolutions=(320,))
    expected = {**measured, "variants": {"shufflenetv2_x0_5": measured["variants"]["shufflenetv2_x0_5"]}}
    lines = diff_expectations(expected, actual)
    old_params = measured["variants"]["shufflenetv2_x0_5"]["params"]
    assert any(line.startswith(f"shufflenetv2_x0_5: params {old_params:,} -> ") for line in lines)
    assert "shufflenetv2_x0_5 @ 416: in expectations but not measured" in lines


def _doc(variants: dict[str, Any]) -> dict[str, Any]:
    return {"schema": expectations.SCHEMA, "schema_version": 1, "batch_size": 1,
            "resolutions": [416], "variants": variants}


def _entry(params: int, macs: int, shapes: list[list[int]] | None = None) -> dict[str, Any]:
    cell = {"macs": macs, "act_peak_bytes": 1000, "output_shapes": shapes or [[1, 8, 52, 52]]}
    return {"params": params, "by_resolution": {"416": cell}}


def test_diff_lines_read_old_and_new() -> None:
    old = _doc({"picodet_s": _entry(10, 593_460_248), "esnet_m": _entry(1_338_026, 5),
                "bar": _entry(1, 1), "shapes": _entry(1, 1, [[1, 8, 52, 52]])})
    new = _doc({"picodet_s": _entry(10, 601_234_112), "esnet_m": _entry(1_257_683, 5),
                "foo": _entry(1, 1), "shapes": _entry(1, 1, [[1, 8, 52, 52], [1, 8, 26, 26]])})
    assert diff_expectations(old, new) == [
        "variant bar in expectations but not registered",
        "esnet_m: params 1,338,026 -> 1,257,683 (-6.00%)",
        "new variant foo not in expectations (run `archbench expect --update`)",
        "picodet_s @ 416: macs 593,460,248 -> 601,234,112 (+1.31%)",
        "shapes @ 416: output shapes 1x8x52x52 -> 1x8x52x52, 1x8x26x26",
    ]
    assert diff_expectations(old, copy.deepcopy(old)) == []


@pytest.mark.parametrize("name", META_VS_CPU)
def test_meta_values_equal_cpu_profile(measured: dict[str, Any], name: str) -> None:
    entry = measured["variants"][name]
    frame = archbench.profile(name, resolutions=(320, 416, 640))
    for row in frame.to_dict("records"):
        cell = entry["by_resolution"][str(row["resolution"])]
        assert (entry["params"], cell["macs"], cell["act_peak_bytes"]) == (
            row["params"], row["macs"], row["act_peak_bytes"]
        ), f"{name} @ {row['resolution']}"
    model = archbench.create_model(name)
    with torch.inference_mode():
        outputs = model(torch.zeros(1, 3, 320, 320))
    tensors = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    assert [list(t.shape) for t in tensors] == entry["by_resolution"]["320"]["output_shapes"]


def test_measure_model_leaves_the_module_alone() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    model.train()
    entry = measure_model(model, resolutions=(16,))
    assert entry == {"params": 3 * 8 * 9 + 8 + 16, "by_resolution": {"16": {
        "macs": 16 * 16 * 8 * 27, "act_peak_bytes": 2 * 8 * 16 * 16 * 4, "output_shapes": [[1, 8, 16, 16]]}}}
    assert next(model.parameters()).device.type == "cpu" and model.training


def test_update_writes_a_file_that_then_checks_clean(
    measured: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # expect_command measures everything; reuse this module's measurement instead of a third pass
    monkeypatch.setattr(expectations, "measure_expectations", lambda names=None, resolutions=(): measured)
    path = tmp_path / "expectations" / "variants.json"
    n = len(measured["variants"])

    text, code = expect_command(update=True, path=path)
    assert code == 0 and text.startswith(f"wrote {path}: {n} variants x 320/416/640 px")
    assert load_expectations(path) == measured
    assert expect_command(update=False, path=path) == (f"all {n} variants match {path}", 0)
    assert expect_command(update=True, path=path)[0].startswith(f"{path} is up to date")

    stale = json.loads(path.read_text())
    stale["variants"]["esnet_m"]["params"] += 1000
    write_expectations(stale, path)
    text, code = expect_command(update=False, path=path)
    params = measured["variants"]["esnet_m"]["params"]
    assert code == 1
    assert f"esnet_m: params {params + 1000:,} -> {params:,}" in text
    assert "archbench expect --update" in text

    text, code = expect_command(update=True, path=path)
    assert code == 0 and "1 change(s)" in text and f"esnet_m: params {params + 1000:,} -> {params:,}" in text
    assert expect_command(update=False, path=path)[1] == 0


def test_written_file_is_sorted_and_one_value_per_line(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    write_expectations(_doc({"b": _entry(2, 3), "a": _entry(1, 2, [[1, 8, 4, 4], [1, 8, 2, 2]])}), path)
    text = path.read_text()
    assert text.index('"a"') < text.index('"b"')
    assert '"output_shapes": [[1, 8, 4, 4], [1, 8, 2, 2]]' in text
    assert '      "params": 1' in text and text.endswith("}\n")
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_files_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArchbenchError, match="archbench expect --update"):
        load_expectations(tmp_path / "missing.json")
    with pytest.raises(ArchbenchError, match=r"create it with `archbench expect --update --path .*missing.json`"):
        expect_command(update=False, path=tmp_path / "missing.json")  # before measuring anything
    (tmp_path / "other.json").write_text('{"schema": "something.else"}')
    with pytest.raises(ArchbenchError, match="not an archbench expectations file"):
        load_expectations(tmp_path / "other.json")
