"""Latency repeats keep what they measured: each process's rows are saved as it finishes,
an interruption terminates the worker, and --resume runs only the missing processes.

Most tests replace ``archbench.worker.run_worker`` with a deterministic fake, so that
an interrupted-and-resumed run can be compared with an uninterrupted one value for
value; two run real worker processes. Nothing here asserts how long anything took.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torch import nn

import archbench.worker
from archbench.cli import main
from archbench.errors import ArchbenchError
from archbench.profilers.latency import LatencyConfig
from archbench.results import RunResult, load
from archbench.runner import Runner, latency_order
from archbench.settings import RunSettings
from tests.test_robustness import InterruptAfter

QUICK = LatencyConfig(warmup_calls=2, warmup_s=0.0, min_samples=10, min_time_s=0.05, max_time_s=1.0, retries=0)
VARIANTS = ("shufflenetv2_x0_5", "esnet_s")
SETTINGS = RunSettings(variants=VARIANTS, resolutions=(64,), metrics=("params", "latency"), repeats=3, latency=QUICK)
STATIC_STEPS = 2  # one progress step per variant x resolution before the latency processes
# The fake worker measures nothing, so the parent needs no real model (building and calibrating
# the registered variants would be most of these tests' time).
MODELS = {name: nn.Conv2d(3, 4, 3) for name in VARIANTS}


class FakeWorker:
    """Stands in for ``run_worker``: the job's cells in its rotated order, values that depend
    only on (process, cell); ``interrupt_at`` presses Ctrl-C while that process 'runs'."""

    def __init__(self, interrupt_at: int | None = None, fail: tuple[str, int] | None = None,
                 before: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.jobs: list[dict[str, Any]] = []
        self.interrupt_at, self.fail, self.before = interrupt_at, fail, before

    def __call__(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        self.jobs.append(job)
        if self.before:
            self.before(job)
        index = int(job["rotation"])
        if index == self.interrupt_at:
            raise KeyboardInterrupt
        settings = job["settings"]
        wanted = [tuple(c) for c in job["cells"]]
        rows = []
        for name, resolution in latency_order(settings["variants"], settings["resolutions"], index):
            for form in settings["forms"]:
                if (name, resolution, form) not in wanted:
                    continue
                row: dict[str, Any] = {"variant": name, "resolution": resolution, "form": form, "pid": 1000 + index}
                if self.fail == (name, index):
                    row["error"] = "FormError: diverged"
                else:
                    median = 10.0 + index + VARIANTS.index(name)
                    row.update(latency_ms_median=median, latency_ms_iqr=0.1, latency_ms_p90=median + 0.2,
                               latency_ms_min=median - 0.2, latency_n=50, latency_ms_cold=3 * median,
                               latency_rel_ci=0.005, latency_wall_ms_median=median, latency_other_load=0.1,
                               latency_attempts=1, latency_noise="ok", threads=1)
                rows.append(row)
        return rows

    def processes(self) -> list[int]:
        return [int(j["rotation"]) for j in self.jobs]


def _fake(monkeypatch: pytest.MonkeyPatch, worker: FakeWorker) -> FakeWorker:
    monkeypatch.setattr(archbench.worker, "run_worker", worker)
    return worker


def _rows_per_cell(result: RunResult) -> Counter[tuple[str, int, str]]:
    return Counter((p["variant"], p["resolution"], p["form"]) for p in result.latency_processes)


def _processes_of(result: RunResult, variant: str) -> list[int]:
    return sorted(p["process"] for p in result.latency_processes if p["variant"] == variant)


def test_each_process_is_saved_as_it_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, list[int], int]] = []

    def look(job: dict[str, Any]) -> None:  # what results.json holds when a process starts
        if (tmp_path / "results.json").exists():
            saved = load(tmp_path)
            seen.append((int(job["rotation"]), sorted({p["process"] for p in saved.latency_processes}),
                         sum("latency_ms_median" in r for r in saved.records)))

    worker = _fake(monkeypatch, FakeWorker(before=look))
    result = Runner(SETTINGS, tmp_path, models=MODELS).run()
    assert worker.processes() == [0, 1, 2]
    # process 1 starts with process 0's rows on disk, process 2 with 0's and 1's; no headline before all are in
    assert seen == [(0, [], 0), (1, [0], 0), (2, [0, 1], 0)]
    assert result.complete and set(_rows_per_cell(result).values()) == {3}
    for record in result.records:
        assert record["latency_repeats"] == 3 and _processes_of(result, record["variant"]) == [0, 1, 2]
        base = 10.0 + VARIANTS.index(record["variant"])
        assert record["latency_ms_median"] == base + 1 and record["latency_ms_spread"] == 2.0
    # each process measured every cell in its own rotation
    assert [p["variant"] for p in result.latency_processes if p["process"] == 1] == ["esnet_s", "shufflenetv2_x0_5"]


@pytest.mark.parametrize("where", ["before the process starts", "while the worker runs"])
def test_interrupted_repeats_resume_to_the_same_structure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    _fake(monkeypatch, FakeWorker())
    whole = Runner(SETTINGS, tmp_path / "whole", models=MODELS).run()

    if where == "before the process starts":  # Ctrl-C at the progress step of process 2 (index 1)
        _fake(monkeypatch, FakeWorker())
        runner = Runner(SETTINGS, tmp_path / "cut", progress=InterruptAfter(STATIC_STEPS + 2), models=MODELS)
    else:  # Ctrl-C while process 2 is measuring
        _fake(monkeypatch, FakeWorker(interrupt_at=1))
        runner = Runner(SETTINGS, tmp_path / "cut", models=MODELS)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    partial = load(tmp_path / "cut")
    assert not partial.complete
    assert set(_rows_per_cell(partial).values()) == {1} and len(_rows_per_cell(partial)) == 2  # process 0 kept
    assert not any("latency_ms_median" in r for r in partial.records)  # no cell has all its processes

    resumed_worker = _fake(monkeypatch, FakeWorker())
    resumed = Runner(RunSettings.from_json(partial.settings), tmp_path / "cut", models=MODELS).run(partial)
    assert resumed_worker.processes() == [1, 2]  # only the missing processes
    assert resumed.complete and load(tmp_path / "cut").complete
    assert _rows_per_cell(resumed) == _rows_per_cell(whole)
    assert resumed.latency_processes == whole.latency_processes
    assert resumed.records == whole.records


def test_resume_runs_only_the_processes_each_cell_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, FakeWorker())
    whole = Runner(SETTINGS, tmp_path / "whole", models=MODELS).run()
    _fake(monkeypatch, FakeWorker())
    with pytest.raises(KeyboardInterrupt):
        Runner(SETTINGS, tmp_path / "cut", progress=InterruptAfter(STATIC_STEPS + 3), models=MODELS).run()  # before process 3
    partial = load(tmp_path / "cut")
    assert _processes_of(partial, "esnet_s") == [0, 1] == _processes_of(partial, "shufflenetv2_x0_5")
    # as if esnet_s's row of process 1 had been lost: it lacks processes 1 and 2, shufflenet only 2
    partial.latency_processes = [p for p in partial.latency_processes
                                 if (p["variant"], p["process"]) != ("esnet_s", 1)]

    worker = _fake(monkeypatch, FakeWorker())
    resumed = Runner(RunSettings.from_json(partial.settings), tmp_path / "cut", models=MODELS).run(partial)
    assert [(int(j["rotation"]), [c[0] for c in j["cells"]]) for j in worker.jobs] == [
        (1, ["esnet_s"]), (2, ["shufflenetv2_x0_5", "esnet_s"])]
    assert list(worker.jobs[0]["settings"]["variants"]) == ["esnet_s"]  # the job spans only its cells
    assert resumed.records == whole.records
    assert sorted(resumed.latency_processes, key=lambda p: (p["process"], p["variant"])) == sorted(
        whole.latency_processes, key=lambda p: (p["process"], p["variant"]))


def test_a_cell_failing_in_one_process_is_failed_and_left_out_of_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = _fake(monkeypatch, FakeWorker(fail=("esnet_s", 0)))
    result = Runner(SETTINGS, tmp_path, models=MODELS).run()
    esnet = result.record("esnet_s", 64)
    assert esnet is not None and esnet["status"] == "failed" and esnet["reason"] == "FormError: diverged"
    assert [[c[0] for c in j["cells"]] for j in worker.jobs] == [
        ["shufflenetv2_x0_5", "esnet_s"], ["shufflenetv2_x0_5"], ["shufflenetv2_x0_5"]]
    shufflenet = result.record("shufflenetv2_x0_5", 64)
    assert shufflenet is not None and shufflenet["latency_repeats"] == 3
    assert result.complete and load(tmp_path).records == result.records

    _fake(monkeypatch, FakeWorker(fail=("esnet_s", 0)))
    with pytest.raises(ArchbenchError, match="esnet_s @ 64: FormError: diverged"):
        Runner(SETTINGS, None, strict=True, models=MODELS).run()


# -- real worker processes ------------------------------------------------------------------


def _live(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_interrupting_run_worker_terminates_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[subprocess.Popen[str]] = []

    class Recorded(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    # a worker that reads its job, says so, then would measure for two minutes
    monkeypatch.setattr(archbench.worker, "WORKER_COMMAND", (
        sys.executable, "-c", "import sys, time; sys.stdin.read(); print('ready', file=sys.stderr, flush=True); "
                              "time.sleep(120)"))
    monkeypatch.setattr(archbench.worker.subprocess, "Popen", Recorded)
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 60
        while not started and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # let the parent settle into waiting for the output
        signal.pthread_kill(main_thread, signal.SIGINT)

    helper = threading.Thread(target=press_ctrl_c)
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            archbench.worker.run_worker({"settings": {}, "rotation": 0, "cells": []})
    finally:
        helper.join()
    (process,) = started
    assert process.returncode == -signal.SIGTERM  # terminated by run_worker and reaped, not left running
    assert not _live(process.pid)


def test_real_repeats_interrupted_and_resumed(tmp_path: Path) -> None:
    settings = RunSettings(variants=("shufflenetv2_x0_5",), resolutions=(64,), metrics=("latency",), repeats=2,
                           latency=QUICK)
    whole = Runner(settings, tmp_path / "whole").run()
    with pytest.raises(KeyboardInterrupt):  # step 1: the static phase, 2: process 1, 3: process 2
        Runner(settings, tmp_path / "cut", progress=InterruptAfter(3)).run()
    partial = load(tmp_path / "cut")
    assert not partial.complete and [p["process"] for p in partial.latency_processes] == [0]
    assert "latency_ms_median" not in partial.records[0]
    first = partial.latency_processes[0]

    resumed = Runner(RunSettings.from_json(partial.settings), tmp_path / "cut").run(partial)
    assert resumed.complete
    assert [p["process"] for p in resumed.latency_processes] == [0, 1]
    assert resumed.latency_processes[0] == first  # kept, not measured again
    pids = {p["pid"] for p in resumed.latency_processes}
    assert len(pids) == 2 and os.getpid() not in pids
    # the same structure as the uninterrupted run: same cells, same columns, same number of rows per cell
    assert [(r["variant"], r["resolution"], r["form"]) for r in resumed.records] == [
        (r["variant"], r["resolution"], r["form"]) for r in whole.records]
    assert [set(r) for r in resumed.records] == [set(r) for r in whole.records]
    assert _rows_per_cell(resumed) == _rows_per_cell(whole) == Counter({("shufflenetv2_x0_5", 64, "eager"): 2})
    record = resumed.records[0]
    medians = sorted(p["latency_ms_median"] for p in resumed.latency_processes)
    assert record["latency_repeats"] == 2 and record["latency_ms_median"] == pytest.approx(sum(medians) / 2)


def _worker_children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and b"archbench.worker" in cmdline:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker process through /proc")
def test_sigterm_during_repeats_terminates_the_worker_and_resume_finishes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "archbench", "run", "--variants", "shufflenetv2_x0_5",
                             "--resolutions", "64", "--metrics", "latency", "--repeats", "2", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        # wait until process 1's rows are saved and process 2's worker is running, then terminate the run
        deadline, workers = time.monotonic() + 180, []
        while time.monotonic() < deadline and proc.poll() is None:
            saved = (json.loads((out / "results.json").read_text()) if (out / "results.json").exists()
                     else {"latency_processes": []})
            workers = _worker_children(proc.pid)
            if saved["latency_processes"] and workers:
                break
            time.sleep(0.05)
        assert workers, "never saw a saved process and a running worker"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and f"archbench run --resume {out}" in err
    assert not any(_live(w) for w in workers)  # the worker was terminated, not left running
    partial = load(out)
    assert not partial.complete and [p["process"] for p in partial.latency_processes] == [0]
    assert "latency_ms_median" not in partial.records[0]
    kept = partial.latency_processes[0]

    assert main(["run", "--resume", str(out)]) == 0
    final = load(out)
    assert final.complete and [p["process"] for p in final.latency_processes] == [0, 1]
    assert final.latency_processes[0] == kept  # kept, only process 2 was run again
    assert final.records[0]["latency_repeats"] == 2


def test_worker_rows_are_json_safe() -> None:
    assert archbench.worker._json_safe(math.nan) is None and archbench.worker._json_safe(math.inf) is None
    assert archbench.worker._json_safe(1.5) == 1.5 and archbench.worker._json_safe("ok") == "ok"
