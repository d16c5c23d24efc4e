"""Latency repeats in fresh processes: ``python -m archbench.worker``.

The parent (``latency_in_processes``) starts one process per repeat and sends it a
JSON job on stdin: the run's settings restricted to the cells still to measure, and
the process's rotation of the measuring order. The process runs the same sweep as
``archbench run`` (``Runner``, latency phase) and writes one JSON object per cell on
stdout, in the order it measured them. Not a user command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from archbench.errors import ArchbenchError
from archbench.settings import RunSettings

_NOT_MEASURED = ("batch_size", "device", "status", "reason")


def job_for(settings: RunSettings, cells: Sequence[Any], rotation: int) -> dict[str, Any]:
    """The job of one repeat process: latency only, of the given cells' variants, resolutions and forms."""
    subset = replace(
        settings,
        variants=tuple(dict.fromkeys(c.variant for c in cells)),
        resolutions=tuple(dict.fromkeys(c.resolution for c in cells)),
        forms=tuple(dict.fromkeys(c.form for c in cells)),
        metrics=("latency",), counters=(), repeats=1, baseline=None,
    )
    return {"settings": subset.to_json(), "rotation": rotation}


def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Measure a job's cells in this process; one row per cell (``error`` where it failed)."""
    from archbench.runner import Runner

    runner = Runner(RunSettings.from_json(job["settings"]), None, rotation=int(job["rotation"]),
                    memory_probe=lambda: None)  # the parent sized every cell already
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
            row.update({k: v for k, v in record.items() if k not in row and k not in _NOT_MEASURED})
        rows.append(row)
    return rows


def run_worker(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one job in a fresh interpreter and return its rows."""
    done = subprocess.run(
        [sys.executable, "-m", "archbench.worker"], input=json.dumps(job), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArchbenchError(f"latency worker process failed: {last}")
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def latency_in_processes(settings: RunSettings, cells: Sequence[Any]) -> list[dict[str, Any]]:
    """Per-process latency rows: ``settings.repeats`` fresh processes, each measuring every
    cell in the interleaved order, rotated by its index."""
    rows = []
    for index in range(settings.repeats):
        rows += [{**row, "process": index} for row in run_worker(job_for(settings, cells, index))]
    return rows


def main() -> int:
    job = json.load(sys.stdin)
    json.dump(run_job(job), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
