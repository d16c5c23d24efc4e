"""Latency repeats in fresh processes: ``python -m archbench.worker``.

The parent (``Runner._repeated_latency``) runs one process per repeat, one after
another, with ``run_worker``, and sends it a JSON job on stdin (``job_for``): the run's
settings restricted to the cells that process still has to measure, the list of
those cells, and the process's index, which rotates the measuring order. The process
runs the same sweep as ``archbench run`` (``Runner``, latency phase) over exactly
those cells and writes one JSON object per cell on stdout, in the order it measured
them. Not a user command.

A process's rows reach the parent when it exits, and the parent saves them at once.
``run_worker`` never leaves a process running: if the parent is interrupted while it
waits (Ctrl-C, or SIGTERM, which ``archbench run`` delivers as ``KeyboardInterrupt``),
it terminates the process (SIGTERM, then SIGKILL after ``TERMINATE_GRACE_S``), waits
for it and re-raises; that process's cells are measured again by ``--resume``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from archbench.cells import Cell
from archbench.errors import ArchbenchError
from archbench.runner import Runner
from archbench.settings import RunSettings

_NOT_MEASURED = ("batch_size", "device", "status", "reason")

#: The worker's command line (tests may point it elsewhere).
WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "archbench.worker")
#: Seconds a terminated worker gets to exit before it is killed.
TERMINATE_GRACE_S = 5.0


def job_for(settings: RunSettings, cells: Sequence[Cell], rotation: int,
            artifacts_root: Path | None = None) -> dict[str, Any]:
    """The job of one repeat process: latency only, of exactly the given cells (forms keep
    their conversion files under ``artifacts_root`` when given)."""
    subset = replace(
        settings,
        variants=tuple(dict.fromkeys(c.variant for c in cells)),
        resolutions=tuple(dict.fromkeys(c.resolution for c in cells)),
        forms=tuple(dict.fromkeys(c.form for c in cells)),
        metrics=("latency",), counters=(), repeats=1, baseline=None,
    )
    return {"settings": subset.to_json(), "rotation": rotation,
            "cells": [[c.variant, c.resolution, c.form] for c in cells],
            "artifacts_root": str(artifacts_root) if artifacts_root is not None else None}


@dataclass
class _JobRunner(Runner):
    """The sweep restricted to a job's cells (its settings span their cross product)."""

    only: frozenset[Cell] | None = None

    def latency_cells(self) -> list[Cell]:
        cells = super().latency_cells()
        return cells if self.only is None else [c for c in cells if c in self.only]


def _json_safe(value: Any) -> Any:
    """None for NaN/inf (an unknown ``latency_other_load``), as results.json writes them; the
    catalog's aggregation leaves None out."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Measure a job's cells in this process; one row per cell (``error`` where it failed)."""
    only = frozenset(Cell(str(v), int(r), str(f)) for v, r, f in job["cells"]) if "cells" in job else None
    root = job.get("artifacts_root")
    runner = _JobRunner(RunSettings.from_json(job["settings"]), None, rotation=int(job["rotation"]),
                        memory_probe=lambda: None, only=only,  # the parent sized every cell already
                        artifacts_root=Path(root) if root else None)
    result = runner.run()
    records = {(r["variant"], r["resolution"], r["form"]): r for r in result.records}
    rows = []
    for cell in runner.latency_cells():
        record = records[(cell.variant, cell.resolution, cell.form)]
        row: dict[str, Any] = {"variant": cell.variant, "resolution": cell.resolution, "form": cell.form,
                               "pid": os.getpid()}
        if record["status"] != "ok":
            row["error"] = record["reason"]
        else:
            row.update({k: _json_safe(v) for k, v in record.items() if k not in row and k not in _NOT_MEASURED})
        rows.append(row)
    return rows


def _stop(process: subprocess.Popen[str]) -> None:
    """Terminate ``process`` and wait for it; kill it if it outlives the grace period."""
    try:
        process.terminate()
        process.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    finally:  # also when interrupted again while waiting
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                with suppress(OSError):
                    pipe.close()


def run_worker(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one job in a fresh interpreter and return its rows; the process never outlives the call."""
    process = subprocess.Popen(list(WORKER_COMMAND), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(json.dumps(job))
    except BaseException:  # KeyboardInterrupt (Ctrl-C, SIGTERM in archbench run), or anything else
        _stop(process)
        raise
    if process.returncode != 0:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        raise ArchbenchError(f"latency worker process failed: {last}")
    rows: list[dict[str, Any]] = json.loads(stdout)
    return rows


def main() -> int:
    job = json.load(sys.stdin)
    json.dump(run_job(job), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
