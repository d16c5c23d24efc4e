"""archbench sweep on the local backend: the run's schema, static cells on meta equal to the
CPU's, failures per cell, interruption and resume, timing cells one at a time, bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

import archbench
from archbench.cli import main
from archbench.errors import EXIT_INTERRUPTED
from archbench.results import RunResult, load
from archbench.settings import RunSettings
from archbench.spaces import sample_names
from archbench.sweep import (
    LocalBackend,
    SweepRunner,
    node_labels,
    sweep_variants,
    timing_environment,
)

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
    (["sweep", "esnet_ratio", "--samples", "1", "--on", "xeon,arm"], "--address and --on need --backend ray"),
    (["sweep", "esnet_ratio", "--samples", "1", "--backend", "ray", "--on", "x/y,z"], "cannot name a run folder"),
    (["sweep", "esnet_ratio", "--samples", "1", "--force"], "--force needs --predict-with"),
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


# -- sweeps timed under several node labels (an in-process stand-in for Ray) -------------------
LABELLED = ["sweep", "esnet_ratio", "--samples", "2", "--seed", "11", "--no-registered", "--resolutions", "64",
            "--metrics", "params,latency", "--backend", "ray"]
#: The stand-in's latency of every cell timed under each label, and the CPU of its nodes.
LABEL_MS = {"xeon": 2.0, "arm": 5.0}


class LabelledNodes:
    """A backend standing in for a Ray cluster with one node per label: static jobs run here
    (the real job), timed jobs answer ``LABEL_MS[label]`` from host ``<label>-node`` whose CPU
    is ``<label> CPU``. Records what it was given; Ctrl-C after ``interrupt_after`` timed cells."""

    name = "ray"

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.interrupt_after = interrupt_after
        self.static_jobs: list[dict[str, Any]] = []
        self.timed_calls: list[list[dict[str, Any]]] = []

    def static(self, jobs: Sequence[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any]]:
        from archbench.sweep_jobs import static_job

        self.static_jobs += jobs
        for job in jobs:
            yield job, static_job(job)

    def timed(self, jobs: Sequence[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any]]:
        from archbench.environment import environment

        self.timed_calls.append(list(jobs))
        for i, job in enumerate(jobs):
            if i == self.interrupt_after:
                raise KeyboardInterrupt
            label, host = job["on"], f"{job['on']}-node"
            record = {"variant": job["variant"], "resolution": job["resolution"], "form": job["form"],
                      "status": "ok", "reason": "", "latency_ms_median": LABEL_MS[label], "latency_ms_iqr": 0.01,
                      "threads": 1, "host": host}
            yield job, {"records": [record], "layers": [], "host": host, "pid": 1, "start": 0.0, "end": 0.0,
                        "environment": {**environment(1), "cpu_model": f"{label} CPU"}}

    def close(self) -> None:
        pass


@dataclass
class StandIns:
    """The backends the sweep command made (``make_backend`` replaced by ``make``); the first
    one stops with Ctrl-C after one timed cell if ``interrupt_first``."""

    interrupt_first: bool = False
    made: list[LabelledNodes] = field(default_factory=list)

    def make(self, name: str, workers: int, address: str | None = None, on: Any = None,
             threads: int = 1) -> LabelledNodes:
        assert (name, node_labels(on)) == ("ray", ("xeon", "arm"))
        self.made.append(LabelledNodes(1 if self.interrupt_first and not self.made else None))
        return self.made[-1]


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> StandIns:
    import archbench.sweep as sweep

    found = StandIns()
    monkeypatch.setattr(sweep, "make_backend", found.make)
    return found


def measured(run: RunResult, *columns: str) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in ("variant", *columns)} for r in run.records]


def test_one_sweep_on_two_kinds_of_node_keeps_each_label_apart(stand_ins: StandIns, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "two"
    assert main([*LABELLED, "--on", "xeon,arm", "--out", str(out)]) == 0
    backend = stand_ins.made[0]
    names = list(sample_names(archbench.default_registry().space("esnet_ratio"), 2, seed=11))
    assert [job["variant"] for job in backend.static_jobs] == names  # counted once for both labels
    assert len(backend.timed_calls) == 1  # every label's timed cells submitted together
    assert [(job["variant"], job["on"]) for job in backend.timed_calls[0]] == [
        (names[0], "xeon"), (names[0], "arm"), (names[1], "xeon"), (names[1], "arm")]
    assert json.loads((out / "sweep.json").read_text())["on"] == ["xeon", "arm"]
    assert not (out / "results.json").exists()
    runs = {label: load(out / label) for label in LABEL_MS}
    for label, run in runs.items():
        assert run.complete and run.environment["sweep"]["on"] == label
        assert run.environment["cpu_model"] == f"{label} CPU" and list(run.environment["hosts"]) == [f"{label}-node"]
        assert measured(run, "node_label", "host", "latency_ms_median") == [
            {"variant": name, "node_label": label, "host": f"{label}-node", "latency_ms_median": LABEL_MS[label]}
            for name in names]
        assert (out / label / "report.md").exists()
    assert measured(runs["xeon"], "params", "model_state") == measured(runs["arm"], "params", "model_state")
    assert all(r["params"] > 0 for r in runs["xeon"].records)
    err = capsys.readouterr().err
    assert f"xeon: {out / 'xeon'} (2 of 2 cells" in err and f"arm: {out / 'arm'} (2 of 2 cells" in err
    assert f"compare: archbench compare {out / 'xeon'} {out / 'arm'}" in err
    summary = (out / "report.md").read_text()
    assert "| xeon | [xeon/](xeon/report.md) | 2 of 2 | 0 | xeon-node | xeon CPU |" in summary
    # different CPUs: latency is not compared unless forced; forced, arm's 5 ms against xeon's 2 ms is slower
    assert main(["compare", str(out / "xeon"), str(out / "arm")]) == 0
    assert "cpu_model differs (xeon CPU vs arm CPU)" in capsys.readouterr().out
    assert main(["compare", str(out / "xeon"), str(out / "arm"), "--force"]) == 1
    assert main(["report", str(out / "arm")]) == 0


def test_an_interrupted_sweep_on_two_kinds_of_node_resumes_every_label(stand_ins: StandIns, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cut"
    stand_ins.interrupt_first = True
    assert main([*LABELLED, "--on", "xeon,arm", "--out", str(out)]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert f"saved to {out / 'xeon' / 'results.json'}, {out / 'arm' / 'results.json'}" in err
    assert f"`archbench sweep --resume {out}`" in err
    cut = {label: load(out / label) for label in LABEL_MS}
    assert [run.progress() for run in cut.values()] == [(1, 2), (0, 2)]
    assert not any(run.complete for run in cut.values())
    assert "incomplete" in (out / "report.md").read_text()

    assert main(["sweep", "--resume", str(out)]) == 0  # the recorded backend (ray), every label
    resumed = stand_ins.made[1]
    assert resumed.static_jobs == [] and [job["on"] for job in resumed.timed_calls[0]] == ["xeon", "arm", "arm"]
    for label in LABEL_MS:
        run = load(out / label)
        assert run.complete and [r["latency_ms_median"] for r in run.records] == [LABEL_MS[label]] * 2
    assert main(["sweep", "--resume", str(out)]) == 0
    assert "already complete" in capsys.readouterr().err


def test_timing_environment_lists_each_cpu_its_hosts_differ_on() -> None:
    a = {"cpu_model": "A", "cpu_cores": 4, "torch": "2.13", "ceilings": {"peak_gflops": 50.0}}
    assert timing_environment({"a": a}) == a
    b = {**a, "cpu_model": "B", "cpu_cores": 8, "ceilings": {"peak_gflops": 80.0}}
    assert timing_environment({"a": a, "b": b}) == {  # the layers metric's ceilings are a dict: kept as the first's
        "cpu_model": "A | B", "cpu_cores": 4, "torch": "2.13", "ceilings": {"peak_gflops": 50.0}}


def test_a_table_from_another_cpu_ranks_a_sweep_only_with_force(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from archbench.environment import environment
    from archbench.predict import LatencyTable

    table = LatencyTable(environment={**environment(1), "cpu_model": "Other CPU 9000"},
                         settings={"threads": 1, "device": "cpu", "batch_size": 1, "input": "image",
                                   "forms": ["eager"], "resolutions": [64]})
    table.add("eager", {"signature": "Conv2d(...)", "type": "Conv2d", "kind": "dense", "macs": 10,
                        "bytes_moved": 10, "latency_ms": 1.0})
    table.save(tmp_path / "t.json")
    args = ["sweep", "esnet_ratio", "--samples", "2", "--seed", "11", "--no-registered", "--resolutions", "64",
            "--metrics", "params", "--predict-with", str(tmp_path / "t.json"), "--measure-top", "1"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cpu_model differs (Other CPU 9000 vs " in err and "pass --force" in err and "\n" not in err
    assert not (tmp_path / "refused").exists()
    assert main([*args, "--force", "--out", str(tmp_path / "forced")]) == 0
    err = capsys.readouterr().err
    assert ("archbench: warning: latency table used across different conditions (--force): "
            "cpu_model differs (Other CPU 9000 vs ") in err
    sweep = load(tmp_path / "forced").environment["sweep"]
    assert sweep["measure_top"] == 1 and len(sweep["predicted_ms"]) == 1
    assert "cpu_model differs" in sweep["predict_forced"][0]
