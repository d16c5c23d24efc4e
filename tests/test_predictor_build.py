"""``archbench predictor build --resume``: an interrupted build finished from its run folder,
measuring only the cells its results.json lacks, then writing the table; the interruption's
message; and the bad input around it. Tiny settings (two small variants at 64 px, latency
sampled briefly, the machine's ceilings fixed); nothing about timing is asserted."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import archbench
import archbench.machine as machine
import archbench.predict.table as table_module
import archbench.render.console as console
import archbench.runner as runner_module
from archbench.cli import main
from archbench.errors import EXIT_INTERRUPTED
from archbench.machine import Ceilings
from archbench.predict import load_table
from archbench.predict.build import BUILD_MARK, BuildPlan, build_runner
from archbench.profilers.latency import LatencyConfig
from archbench.results import RunResult, load, save
from archbench.runner import NoProgress

VARIANTS = ("esnet_s", "esnet_s.nose")
#: Latency sampled for a few hundredths of a second (recorded with the settings, so the resume uses it too).
BRIEF = LatencyConfig(warmup_calls=1, warmup_s=0.0, min_samples=5, min_time_s=0.01, max_time_s=0.1, retries=0)
CEILINGS = Ceilings(peak_gflops=100.0, bandwidth_gbps=10.0, device="cpu", device_model="test", threads=1,
                    torch_version="test", method="fixed for the test", measured_at="2026-01-01T00:00:00")


class InterruptAfter(NoProgress):
    """Progress that interrupts the run, as Ctrl-C would, once ``cells`` cells are done."""

    def __init__(self, cells: int) -> None:
        self.left = cells

    def advance(self) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


@pytest.fixture(autouse=True)
def quick_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed ceilings and no BatchNorm calibration (each takes seconds, and neither is what is
    tested); every cell pooled as measured, however busy or slow the machine (a test run on a
    shared machine would otherwise leave cells out, and the table could be empty)."""
    monkeypatch.setattr(machine, "machine_ceilings", lambda device="cpu", threads=1, **_: CEILINGS)
    monkeypatch.setattr(runner_module, "calibration_batches", lambda kind, resolution: [])
    monkeypatch.setattr(table_module, "contended_layers", lambda record: False)
    monkeypatch.setattr(table_module, "speed_factors", lambda result: (math.nan, {}))


def measured_cells(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(variant, phase) of every cell the runner measures from now on."""
    measured: list[tuple[str, str]] = []
    real = runner_module.measure_cell

    def spy(model: Any, cell: Any, settings: Any, phase: str, *args: Any) -> dict[str, Any]:
        measured.append((cell.variant, phase))
        return real(model, cell, settings, phase, *args)

    monkeypatch.setattr(runner_module, "measure_cell", spy)
    return measured


def latency_of(result: RunResult, variant: str) -> float:
    record = result.record(variant, 64, "eager")
    assert record is not None
    return float(record["latency_ms_median"])


def test_an_interrupted_build_resumes_measuring_only_the_missing_cells(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    folder, out = tmp_path / "build", tmp_path / "tables" / "t.json"
    plan = BuildPlan(VARIANTS, (64,), ("eager",), 1, out=out, latency=BRIEF)
    # cells in order: static x 2, latency x 2, layers x 2; interrupted after the first latency cell
    registry = archbench.default_registry()
    with build_runner(registry, plan, folder, progress=InterruptAfter(3)) as runner, pytest.raises(KeyboardInterrupt):
        runner.run()
    cut = load(folder)
    assert not cut.complete and cut.environment[BUILD_MARK] == {"out": str(out.absolute())}
    assert [r["variant"] for r in cut.records if r.get("latency_ms_median") is not None] == ["esnet_s"]
    assert not cut.layers and not out.exists()
    first_latency = latency_of(cut, "esnet_s")

    measured = measured_cells(monkeypatch)
    assert main(["predictor", "build", "--resume", str(folder)]) == 0
    assert measured == [("esnet_s.nose", "latency"), ("esnet_s", "layers"), ("esnet_s.nose", "layers")]
    resumed = load(folder)
    assert resumed.complete and latency_of(resumed, "esnet_s") == first_latency  # kept, not measured again
    assert resumed.settings["latency_config"]["max_time_s"] == BRIEF.max_time_s  # the recorded settings
    table = load_table(out)  # written where the build said, from every cell
    assert [c["variant"] for c in table.cells] == list(VARIANTS)
    assert table.build["variants"] == list(VARIANTS) and table.build["results"] == str(folder / "results.json")
    assert table.entries and f"table: {out}" in capsys.readouterr().err
    # finished: a second resume measures nothing and writes the table again, here elsewhere
    assert main(["predictor", "build", "--resume", str(folder / "results.json"), "--out", str(tmp_path / "t2.json")]) == 0
    assert len(measured) == 3 and load_table(tmp_path / "t2.json").cells == table.cells


def test_an_interrupted_build_names_its_resume_and_keeps_its_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(console, "RichProgress", lambda: InterruptAfter(1))  # Ctrl-C after the first cell
    folder, out = tmp_path / "build", tmp_path / "t.json"
    args = ["predictor", "build", "esnet_s", "-r", "64", "--out", str(out), "--folder", str(folder)]
    assert main(args) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted: 0 of 1 cells complete" in err and f"`archbench predictor build --resume {folder}`" in err
    assert load(folder).environment[BUILD_MARK] == {"out": str(out.absolute())} and not out.exists()
    assert main(args) == 2  # the folder holds the build: resume it, or measure elsewhere
    assert f"archbench predictor build --resume {folder}" in capsys.readouterr().err


def test_a_space_build_is_a_sweep_marked_as_a_build_and_resumes_as_one(tmp_path: Path) -> None:
    """A space's build goes through the sweep pipeline (nothing is measured here: the runners
    only): its results start with the build's mark, and its resume is a sweep of the recorded space."""
    from archbench.predict.build import resume_runner
    from archbench.sweep import SweepRunner

    registry = archbench.default_registry()
    plan = BuildPlan(("esnet_ratio-0000000",), (64,), ("eager",), 1, space="esnet_ratio", seed=3, samples=1,
                     out=tmp_path / "t.json")
    with build_runner(registry, plan, tmp_path / "build", workers=1) as runner:
        assert isinstance(runner, SweepRunner) and runner.space == "esnet_ratio"
        assert runner.sweep_info == {"space": "esnet_ratio", "samples": 1, "seed": 3, "registered": False, "on": None,
                                     "backend": "local", "workers": 1}
        started = runner._new_result()  # what its results.json starts from
    assert started.environment[BUILD_MARK] == {"out": str((tmp_path / "t.json").absolute())}
    started.environment["sweep"] = dict(runner.sweep_info)
    with resume_runner(registry, started, tmp_path / "build", workers=1) as again:
        assert isinstance(again, SweepRunner) and again.space == "esnet_ratio" and again.settings == runner.settings


def _run_folder(folder: Path) -> Path:
    """A run's folder: results.json without the build's mark."""
    result = RunResult("r", "", "archbench run", "", {"variants": ["esnet_s"], "resolutions": [64], "threads": 1,
                                                       "device": "cpu", "forms": ["eager"], "input": "image"}, {})
    save(result, folder)
    return folder


@pytest.mark.parametrize(("args", "message"), [
    (["--resume", "nowhere"], "--resume nowhere: no build to resume there (no nowhere/results.json)"),
    (["--resume", "empty"], "no build to resume there (no empty/results.json)"),
    (["--resume", "run"], "run holds a run or sweep, not a latency table's build"),
    (["--resume", "run/results.json"], "run holds a run or sweep, not a latency table's build"),
    (["esnet_s", "--resume", "run"], "--resume uses the build recorded in run; drop SOURCE"),
    (["--resume", "run", "--seed", "3"], "--resume uses the build recorded in run; drop --seed"),
    (["--resume", "run", "--from-results", "run/results.json"], "drop --from-results"),
    (["--resume", "run", "--out", "empty"], "--out empty is a folder"),
])
def test_resume_refuses_what_is_not_a_build_in_one_line(args: list[str], message: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    before = (_run_folder(tmp_path / "run") / "results.json").read_text()
    assert main(["predictor", "build", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert (tmp_path / "run" / "results.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run"]  # nothing written
