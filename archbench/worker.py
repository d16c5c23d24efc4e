"""``python -m archbench.worker``: one latency repeat in a fresh process.

Reads a JSON job on stdin, builds the variants, measures them in the
interleaved order ``latency_order`` gives for its rotation, and writes one
JSON object per cell on stdout. Run by ``archbench.profile(..., repeats=N)``;
not a user command.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from archbench.errors import ArchbenchError
from archbench.profilers.latency import LatencyConfig, cpu_threads
from archbench.profiling import check_device, failure_reason, latency_cell, latency_order


def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    from archbench.factory import create_model

    device = check_device(job["device"])
    config = LatencyConfig(**job["config"])
    models = {name: create_model(name) for name in job["variants"]}
    rows = []
    with cpu_threads(job["threads"]):
        for name, resolution in latency_order(job["variants"], job["resolutions"], job["rotation"]):
            for form in job["forms"]:
                row: dict[str, Any] = {"variant": name, "resolution": resolution, "form": form, "pid": os.getpid()}
                try:
                    row.update(latency_cell(models[name], resolution, job["batch_size"], device, config,
                                            job["threads"], form))
                except (ArchbenchError, RuntimeError, MemoryError, ValueError) as exc:  # per cell; the rest goes on
                    row["error"] = failure_reason(exc)
                rows.append(row)
    return rows


def main() -> int:
    job = json.load(sys.stdin)
    json.dump(run_job(job), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
