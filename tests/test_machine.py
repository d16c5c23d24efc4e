"""Machine ceilings: measured once, cached per (device model, threads, torch version) in the
user's cache directory, re-measured with refresh; the real measurement at small sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import archbench
import archbench.machine as machine
from archbench.cli import main


@pytest.fixture
def fake_measure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, int]]:
    """A tmp cache directory and a measuring function that records its calls."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls: list[tuple[str, int]] = []

    def measure(device: str, threads: int) -> tuple[float, float, str]:
        calls.append((device, threads))
        return 100.0 * len(calls), 10.0, "fake method"

    monkeypatch.setattr(machine, "measure_ceilings", measure)
    return calls


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert machine.cache_dir() == tmp_path / "archbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert machine.cache_dir() == tmp_path / "home" / ".cache" / "archbench"


def test_measured_once_then_read_from_the_cache(fake_measure: list[tuple[str, int]], tmp_path: Path) -> None:
    first = archbench.machine_ceilings(device="cpu", threads=1)
    assert fake_measure == [("cpu", 1)]
    assert first.peak_gflops == 100.0 and first.bandwidth_gbps == 10.0 and not first.cached
    assert first["peak_gflops"] == 100.0 and first.ridge_intensity == 10.0
    assert first.roof_gflops(2.0) == 20.0 and first.roof_gflops(50.0) == 100.0
    path = tmp_path / "cache" / "archbench" / "machine.json"
    data = json.loads(path.read_text())
    key = machine.cache_key(machine.device_model("cpu"), 1, torch.__version__)
    assert data["schema"] == "archbench.machine" and key in data["entries"]
    assert data["entries"][key]["method"] == "fake method"

    second = archbench.machine_ceilings(device="cpu", threads=1)
    assert fake_measure == [("cpu", 1)]  # not measured again
    assert second.cached and second.peak_gflops == 100.0 and second.measured_at == first.measured_at


def test_threads_are_part_of_the_key_and_refresh_remeasures(fake_measure: list[tuple[str, int]]) -> None:
    machine.machine_ceilings("cpu", 1)
    other = machine.machine_ceilings("cpu", 2)
    assert fake_measure == [("cpu", 1), ("cpu", 2)] and other.threads == 2
    refreshed = machine.machine_ceilings("cpu", 1, refresh=True)
    assert len(fake_measure) == 3 and refreshed.peak_gflops == 300.0 and not refreshed.cached
    assert machine.machine_ceilings("cpu", 1).peak_gflops == 300.0  # the refreshed value is cached
    assert machine.machine_ceilings("cpu", 2).peak_gflops == 200.0  # the other entry is kept


def test_a_corrupt_cache_is_remeasured(fake_measure: list[tuple[str, int]], tmp_path: Path) -> None:
    path = tmp_path / "cache" / "archbench" / "machine.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert machine.machine_ceilings("cpu", 1).peak_gflops == 100.0
    assert json.loads(path.read_text())["entries"]


def test_cli_machine_prints_and_refreshes(fake_measure: list[tuple[str, int]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["machine", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "compute peak" in out and "100 GFLOP/s" in out and "10.0 GB/s" in out and "fake method" in out
    assert main(["machine"]) == 0
    assert "cached" in capsys.readouterr().out and len(fake_measure) == 1
    assert main(["machine", "--refresh"]) == 0
    assert "200 GFLOP/s" in capsys.readouterr().out and len(fake_measure) == 2


def test_cli_machine_rejects_a_bad_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["machine", "--device", "tpu"]) == 2
    assert "archbench: error:" in capsys.readouterr().err


def test_real_measurement_small_sizes() -> None:
    peak, bandwidth, method = machine.measure_ceilings("cpu", 1, gemm_n=128, copy_mib=4, repeats=3)
    assert peak > 0 and bandwidth > 0
    assert "n=128" in method and "4 MiB" in method and "1 CPU thread" in method


def test_importing_archbench_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, archbench, archbench.machine; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
