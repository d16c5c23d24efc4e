"""archbench sweep on the local backend: the run's schema, static cells on meta equal to the
CPU's, failures per cell, interruption and resume, timing cells one at a time, bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

import archbench
from archbench.cli import main
from archbench.results import load
from archbench.settings import RunSettings
from archbench.spaces import sample_names
from archbench.sweep import LocalBackend, SweepRunner, sweep_variants

STATIC = ("params", "macs", "memory")
#: Columns that say where or how a record was made, not what was measured.
CONTEXT = {"host", "model_state"}


def static_part(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in CONTEXT}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "esnet"
    code = main(["sweep", "esnet_ratio", "--samples", "3", "--seed", "4", "--resolutions", "64,96",
                 "--metrics", ",".join(STATIC), "--workers", "2", "--out", str(out)])
    assert code == 0
    return out


def test_sweep_writes_a_run_of_the_samples_and_registered_variants(swept: Path) -> None:
    result = load(swept)
    names = sample_names(archbench.default_registry().space("esnet_ratio"), 3, seed=4)
    assert result.complete and len(result.records) == 12 * 2
    assert list(result.settings["variants"])[-3:] == names
    assert {"esnet_s", "esnet_m", "esnet_l.dw"} <= set(result.settings["variants"])
    info = result.variants[names[0]]
    assert info["space"] == "esnet_ratio" and info["point"] == names[0] and info["registered"] is False
    assert result.variants["esnet_m"]["registered"] is True
    assert result.variants["esnet_m"]["point"].startswith("esnet_ratio-")
    assert result.environment["sweep"]["seed"] == 4
    assert all(r["host"] and r["status"] == "ok" for r in result.records)
    assert (swept / "report.md").exists()


def test_static_cells_on_meta_equal_archbench_run_on_the_cpu(swept: Path) -> None:
    result = load(swept)
    name = list(result.settings["variants"])[-1]
    frame = archbench.profile(name, resolutions=(96,))
    row = frame.iloc[0].to_dict()
    record = result.record(name, 96)
    assert record is not None
    measured = {k: v for k, v in record.items() if k in row and k not in {"model_state", "host"}}
    assert measured and all(row[k] == v for k, v in measured.items() if k not in ("status", "reason"))
    assert record["model_state"] == "meta device: counted, not run"


class InterruptAfter:
    """A backend that lets ``n`` static cells finish, then behaves like Ctrl-C."""

    name = "local"

    def __init__(self, inner: LocalBackend, n: int) -> None:
        self.inner, self.n = inner, n

    def static(self, jobs: Sequence[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any]]:
        for i, item in enumerate(self.inner.static(jobs)):
            if i == self.n:
                raise KeyboardInterrupt
            yield item

    def timed(self, jobs: Sequence[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any]]:
        return self.inner.timed(jobs)

    def close(self) -> None:
        self.inner.close()


def test_interrupted_sweep_resumes_to_the_same_records(swept: Path, tmp_path: Path) -> None:
    registry = archbench.default_registry()
    settings = RunSettings(variants=tuple(sweep_variants(registry, "esnet_ratio", 3, 4)), resolutions=(64, 96),
                           metrics=STATIC)
    folder = tmp_path / "cut"
    backend = InterruptAfter(LocalBackend(2), 5)
    runner = SweepRunner(settings, folder, registry=registry, backend=backend, space="esnet_ratio",
                         sweep_info={"space": "esnet_ratio", "samples": 3, "seed": 4})
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    backend.close()
    cut = load(folder)
    assert not cut.complete and len(cut.records) == 5
    assert main(["sweep", "--resume", str(folder), "--workers", "1"]) == 0
    resumed, whole = load(folder), load(swept)
    assert resumed.complete
    key = lambda r: (r["variant"], r["resolution"])  # noqa: E731
    assert sorted(map(static_part, resumed.records), key=key) == sorted(map(static_part, whole.records), key=key)
    assert main(["sweep", "--resume", str(folder), "--seed", "3"]) == 2


def test_unbuildable_choice_is_a_failed_cell_not_fatal(tmp_path: Path) -> None:
    spec = tmp_path / "spaces.toml"
    spec.write_text('[[space]]\nname = "levels"\nbase = "esnet_m_fpn"\nargs.num_levels = { choices = [4, 5] }\n')
    out = tmp_path / "levels"
    code = main(["--specs", str(spec), "sweep", "levels", "--samples", "2", "--no-registered",
                 "--resolutions", "64", "--metrics", "params", "--out", str(out)])
    assert code == 3
    records = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    assert records["levels-0"]["status"] == "ok" and records["levels-0"]["params"] > 0
    assert records["levels-1"]["status"] == "failed" and "num_levels must be 3 or 4" in records["levels-1"]["reason"]


def test_timed_cells_run_one_at_a_time_locally() -> None:
    settings = RunSettings(variants=tuple(sample_names(archbench.default_registry().space("esnet_ratio"), 3, 1)),
                           resolutions=(64,), metrics=("latency",))
    jobs = [{"settings": settings.to_json(), "specs": [], "variant": v, "resolution": 64, "form": "eager"}
            for v in settings.variants]
    backend = LocalBackend(2)
    try:
        outcomes = [outcome for _, outcome in backend.timed(jobs)]
    finally:
        backend.close()
    spans = sorted((o["start"], o["end"]) for o in outcomes)
    assert all(o["records"][0]["status"] == "ok" and o["records"][0]["threads"] == 1 for o in outcomes)
    assert all(end <= next_start for (_, end), (next_start, _) in pairwise(spans))


@pytest.mark.parametrize(("args", "message"), [
    (["sweep", "nope", "--samples", "1"], "unknown space 'nope'"),
    (["sweep", "esnet_ratio", "--samples", "1", "--address", "127.0.0.1:1"], "--address and --on need --backend ray"),
    (["sweep", "esnet_ratio", "--samples", "1", "--backend", "spark"], "unknown backend 'spark'"),
    (["sweep", "esnet_ratio", "--samples", "1", "--metrics", "speed"], "unknown metric"),
    (["sweep", "picodet_neck", "--samples", "97"], "only 96 points"),
    (["sweep"], "name the space to sweep"),
])
def test_bad_sweep_input_is_one_line(args: list[str], message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def dies_on_a(job: dict[str, Any]) -> dict[str, Any]:
    """A stand-in job (module level: spawn workers import it by name) whose worker dies on "a"."""
    import os

    if job["variant"] == "a":
        os._exit(3)
    return {"measured": job["variant"]}


def test_a_dead_worker_fails_its_cell_and_the_sweep_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import archbench.sweep as sweep

    monkeypatch.setattr(sweep, "timed_job", dies_on_a)
    monkeypatch.setattr(sweep, "static_job", dies_on_a)
    backend = LocalBackend(1)
    try:
        timed = list(backend.timed([{"variant": "a"}, {"variant": "b"}]))
        static = list(backend.static([{"variant": "a"}, {"variant": "b"}]))
    finally:
        backend.close()
    assert [(job["variant"], outcome) for job, outcome in timed[1:]] == [("b", {"measured": "b"})]
    assert isinstance(timed[0][1], sweep.BrokenProcessPool)
    assert sweep.failure_of(timed[0][1]).startswith("the worker process died while measuring this cell")
    # jobs that went down with a dying pool are tried again one at a time: only the killer fails
    outcomes = {job["variant"]: outcome for job, outcome in static}
    assert outcomes["b"] == {"measured": "b"} and isinstance(outcomes["a"], sweep.BrokenProcessPool)
