"""Bad input, interruption and resumption: one-line errors, nothing measured is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from archbench.cli import main
from archbench.results import load
from archbench.runner import Runner
from archbench.settings import RunSettings

STATIC = ("params", "macs", "memory")


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--variants", "picodet_s", "--resolutions", "330", "--metrics", "params"],
         "picodet_s cannot take resolution 330: it must be a multiple of the largest backbone stride, 32"),
        (["run", "--variants", "esnet_s", "--resolutions", "-32"], "resolution must be a positive integer, got -32"),
        (["run", "--variants", "esnet_s", "--resolutions", ","], "malformed list"),
        (["run", "--variants", "esnet_s", "--threads", "two"], "malformed thread count 'two'"),
        (["run", "--variants", "esnet_s", "--repeats", "0"], "repeats must be an integer of at least 1, got 0"),
        (["run", "--variants", "esnet_s", "--device", "npu"], "unknown device 'npu'"),
        (["run", "--variants", ""], "empty variant selection"),
        (["run", "--variants", "esnet_z"], "unknown variant 'esnet_z'; did you mean"),
        (["show", "esnet_s", "--counters", "flopco"], "unknown counter 'flopco'"),
        (["run", "--resume", "/nonexistent/run"], "no such file"),
        (["run", "--variants", "esnet_s", "--resolutions", "320,abc"], "malformed resolution 'abc'"),
        (["run", "--variants", "esnet_s", "--batch-size", "0"], "batch size must be an integer of at least 1, got 0"),
        (["run", "--variants", "esnet_s", "--metrics", "params,speed"], "unknown metric 'speed'"),
        (["run", "--variants", "esnet_s", "--baseline", "esnet_m"], "baseline 'esnet_m' is not among the selected"),
        (["run", "--variants", "esnet_s,,esnet_m"], "malformed list"),
        (["report", "/nonexistent/results.json"], "no such file"),
    ],
)
def test_bad_input_is_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str, tmp_path: Path) -> None:
    err = one_line_error(capsys, [*argv, *(["--out", str(tmp_path / "out")] if argv[0] == "run" and "--resume" not in argv else [])])
    assert message in err
    assert not (tmp_path / "out").exists()  # rejected before anything was measured or written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    assert "CUDA is not available" in one_line_error(capsys, ["run", "--variants", "esnet_s", "--device", "cuda"])


BAD_SPECS = [
    ('[[variant]]\nname = "mine"\nfamily = "f"\nkind = "backbone"\nbuilder = "esnet"\nscale = 0.5\n',
     "variant mine: unknown key 'scale'"),
    ('[[variant]]\nname = "mine"\nfamily = "f"\nkind = "backbone"\nbuilder = "esnet"\nargs = 3\n',
     "variant mine: key 'args' must be dict, got int"),
    ('[[variant]]\nname = "mine"\nfamily = "f"\nkind = "backbone"\nbuilder = "esnet"\n'
     'args = { scale = { nested = 1 } }\n', "variant mine: argument 'scale' must be a scalar or a list"),
    ("this is not toml", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPECS)
def test_user_spec_file_errors_name_file_variant_and_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    err = one_line_error(capsys, ["--specs", str(path), "list"])
    assert str(path) in err and message in err


def test_user_spec_file_adds_variants_and_is_data_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[[variant]]\nname = "esnet_tiny"\nfamily = "mine"\nkind = "backbone"\nbuilder = "esnet"\n'
                    'args = { scale = 0.25, channel_ratio = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5] }\n'
                    '[[variant]]\nname = "sneaky"\nfamily = "mine"\nkind = "backbone"\nbuilder = "esnet"\n'
                    'args = { scale = "__import__(\'os\').system(\'touch pwned\')" }\n')
    assert main(["--specs", str(path), "list", "mine"]) == 0
    assert "esnet_tiny" in capsys.readouterr().out
    err = one_line_error(capsys, ["--specs", str(path), "show", "sneaky"])
    assert "argument 'scale'=" in err and "must be float" in err
    assert not Path("pwned").exists()


class InterruptAfter:
    """A progress reporter that presses Ctrl-C when the n-th cell starts."""

    def __init__(self, n: int) -> None:
        self.n, self.steps = n, 0

    def start(self, total: int) -> None:
        pass

    def step(self, description: str) -> None:
        self.steps += 1
        if self.steps == self.n:
            raise KeyboardInterrupt

    def advance(self) -> None:
        pass

    def stop(self) -> None:
        pass


def test_interrupted_run_resumes_to_the_same_results(tmp_path: Path) -> None:
    settings = RunSettings(variants=("shufflenetv2_x0_5", "esnet_s"), resolutions=(64, 96), metrics=STATIC)
    whole = Runner(settings, tmp_path / "whole").run()
    runner = Runner(settings, tmp_path / "cut", progress=InterruptAfter(3))
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    partial = load(tmp_path / "cut")
    assert not partial.complete and len(partial.records) == 2  # cells 1 and 2 saved, cell 3 interrupted
    resumed = Runner(RunSettings.from_json(partial.settings), tmp_path / "cut").run(partial)
    assert resumed.complete and load(tmp_path / "cut").complete
    assert resumed.records == whole.records


def _wait_for(path: Path, ready: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                if ready(json.loads(path.read_text())):  # type: ignore[operator]
                    return
            except json.JSONDecodeError:
                pytest.fail("results.json was seen half-written")
        time.sleep(0.02)
    pytest.fail("the run never produced results")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_saves_partial_results_and_resume_finishes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sig: int, code: int
) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "archbench", "run", "--variants", "shufflenetv2_x0_5,esnet_s",
            "--resolutions", "64,96,128", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    # wait until the latency phase has measured one cell, then interrupt
    _wait_for(out / "results.json", lambda d: any("latency_ms_median" in r for r in d["records"]))
    # while it writes there, a second run or resume into the folder is refused (the other process holds the lock)
    for second in (["run", "--resume", str(out)], ["run", "--variants", "esnet_s", "--out", str(out), "--overwrite"]):
        assert main(second) == 2
        refusal = capsys.readouterr().err
        assert f"another archbench process (pid {proc.pid}, started at " in refusal and refusal.count("\n") == 1
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert not (out / ".archbench.lock").exists()
    assert "interrupted:" in err and f"archbench run --resume {out}" in err and "Traceback" not in err
    partial = load(out)
    assert not partial.complete
    assert len(partial.records) == 6
    measured = {(r["variant"], r["resolution"]): r["latency_ms_median"] for r in partial.records if "latency_ms_median" in r}
    assert 1 <= len(measured) < 6
    assert "This run is incomplete" in (out / "report.md").read_text()

    assert main(["run", "--resume", str(out)]) == 0
    assert not (out / ".archbench.lock").exists()
    final = load(out)
    assert final.complete and all("latency_ms_median" in r for r in final.records)
    # cells measured before the interruption were kept, not measured again
    kept = {(r["variant"], r["resolution"]): r["latency_ms_median"] for r in final.records if
            (r["variant"], r["resolution"]) in measured}
    assert kept == measured


def test_resume_refuses_new_settings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    Runner(RunSettings(variants=("shufflenetv2_x0_5",), resolutions=(64,), metrics=("params",)), tmp_path).run()
    err = one_line_error(capsys, ["run", "--resume", str(tmp_path), "--threads", "2"])
    assert "--resume uses the settings recorded in" in err and "drop --threads" in err


def test_results_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from archbench import results

    Runner(RunSettings(variants=("shufflenetv2_x0_5",), resolutions=(64,), metrics=("params",)), tmp_path).run()
    before = (tmp_path / "results.json").read_text()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk died mid-write")

    monkeypatch.setattr(results.os, "replace", crash)
    with pytest.raises(OSError):
        results.write_atomic(tmp_path / "results.json", "{ half")
    assert (tmp_path / "results.json").read_text() == before
    assert not list(tmp_path.glob(".results.json.*"))


def test_out_of_memory_in_a_cell_is_recorded_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_at_96(monkeypatch, "DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB. out of memory")
    settings = RunSettings(variants=("shufflenetv2_x0_5",), resolutions=(64, 96, 128), metrics=STATIC)
    result = Runner(settings, tmp_path).run()
    assert [r["status"] for r in result.records] == ["ok", "failed", "ok"]
    assert result.records[1]["reason"].startswith("out of memory: DefaultCPUAllocator")
    assert result.complete and load(tmp_path).records[2]["params"] == 143_136


def test_progress_never_redraws_during_a_latency_measurement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import archbench.cells
    from archbench.profilers.latency import LatencyConfig

    measuring = []
    real = archbench.cells.measure_latency

    def tracked(*args: object, **kwargs: object) -> object:
        measuring.append(True)
        try:
            return real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            measuring.pop()

    class Watch(InterruptAfter):
        def step(self, description: str) -> None:
            assert not measuring, f"progress drawn during a measurement: {description}"

        def advance(self) -> None:
            assert not measuring

    monkeypatch.setattr(archbench.cells, "measure_latency", tracked)
    quick = LatencyConfig(warmup_calls=2, warmup_s=0.0, min_samples=10, min_time_s=0.05, max_time_s=1.0, retries=0)
    settings = RunSettings(variants=("shufflenetv2_x0_5",), resolutions=(64,), latency=quick)
    assert Runner(settings, tmp_path, progress=Watch(0)).run().complete


# -- results files are validated on load -------------------------------------------------

REPORTS = sorted((Path(__file__).resolve().parents[1] / "reports").glob("*/results.json"))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    settings = RunSettings(variants=("shufflenetv2_x0_5",), resolutions=(64, 96), metrics=("params",))
    Runner(settings, folder).run()
    return folder / "results.json"


def _broken(good: Path, folder: Path, change: object) -> Path:
    data = json.loads(good.read_text())
    change(data)  # type: ignore[operator]
    folder.mkdir(exist_ok=True)
    path = folder / "results.json"
    path.write_text(json.dumps(data))
    return path


def _set(where: str, key: str, value: object) -> object:
    def change(data: dict) -> None:  # type: ignore[type-arg]
        (data["records"][1] if where == "record" else data["settings"])[key] = value
    return change


MALFORMED = [
    (_set("record", "latency_ms_median", "abc"),
     "record 1 (shufflenetv2_x0_5 @ 96) has field 'latency_ms_median' = \"abc\"; expected a number or null"),
    (_set("record", "params", True), "record 1 (shufflenetv2_x0_5 @ 96) has field 'params' = true; expected a number"),
    (_set("record", "latency_noise", 3), "record 1 (shufflenetv2_x0_5 @ 96) has field 'latency_noise' = 3; "
                                         "expected a string or null"),
    (_set("record", "resolution", "96"), "record 1 has field 'resolution' = \"96\"; expected a positive integer"),
    (_set("record", "resolution", True), "record 1 has field 'resolution' = true; expected a positive integer"),
    (_set("record", "batch_size", 0), "record 1 (shufflenetv2_x0_5 @ 96) has field 'batch_size' = 0"),
    (_set("record", "variant", 7), "record 1 has field 'variant' = 7; expected a non-empty string"),
    (_set("record", "device", None), "record 1 (shufflenetv2_x0_5 @ 96) has field 'device' = null"),
    (_set("record", "form", ["eager"]), "record 1 (shufflenetv2_x0_5 @ 96) has field 'form' = list"),
    (_set("record", "status", "done"), "record 1 (shufflenetv2_x0_5 @ 96) has status \"done\"; expected one of"),
    (_set("record", "reason", None), "record 1 (shufflenetv2_x0_5 @ 96) has field 'reason' = null"),
    (_set("settings", "resolutions", [64, "x"]), "settings.resolutions[1] must be a positive integer, got \"x\""),
    (_set("settings", "variants", "shufflenetv2_x0_5"), "settings.variants must be a list"),
    (_set("settings", "threads", 1.5), "settings.threads must be a positive integer, got 1.5"),
    (_set("settings", "repeats", False), "settings.repeats must be a positive integer, got false"),
    (_set("settings", "metrics", ["params", 3]), "settings.metrics[1] must be a string, got 3"),
    (lambda data: data.update(settings=[1]), "settings must be an object, got list"),
]


@pytest.mark.parametrize(("change", "message"), MALFORMED)
def test_malformed_results_are_refused_by_report_compare_and_resume(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_run: Path, change: object, message: str
) -> None:
    bad = _broken(good_run, tmp_path / "bad", change)
    for argv in (["report", str(bad)], ["compare", str(good_run), str(bad)], ["compare", str(bad), str(good_run)],
                 ["run", "--resume", str(bad.parent)]):
        err = one_line_error(capsys, argv)
        assert f"{bad}: {message}" in err, (argv, err)
    assert not (tmp_path / "bad" / "report.md").exists()


def test_compare_never_calls_an_unreadable_record_unchanged(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_run: Path
) -> None:
    # the same run with one latency turned into text: before validation this compared as "no change", exit 0
    bad = _broken(good_run, tmp_path / "bad", _set("record", "latency_ms_median", "abc"))
    err = one_line_error(capsys, ["compare", str(good_run), str(bad)])
    assert err == (f"archbench: error: {bad}: record 1 (shufflenetv2_x0_5 @ 96) has field 'latency_ms_median' = "
                   "\"abc\"; expected a number or null (metric column)\n")


def test_undeclared_columns_may_hold_anything(tmp_path: Path, good_run: Path) -> None:
    def mine(data: dict) -> None:  # type: ignore[type-arg]
        data["records"][0].update(my_note={"any": ["json"]}, my_flag=True, my_value="12 ms")
        data["records"][1]["latency_ms_median"] = None  # NaN is stored as null

    result = load(_broken(good_run, tmp_path, mine))
    assert result.records[0]["my_note"] == {"any": ["json"]} and result.records[1]["latency_ms_median"] is None


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.parent.name)
def test_committed_reports_still_load(path: Path) -> None:
    result = load(path)
    assert result.complete and result.records


def test_counter_text_columns_load(tmp_path: Path, good_run: Path) -> None:
    def counters(data: dict) -> None:  # type: ignore[type-arg]
        data["records"][0].update(fvcore_total=123, fvcore_unsupported="aten::hardswishx3", thop_unsupported="")

    assert load(_broken(good_run, tmp_path, counters)).records[0]["fvcore_unsupported"] == "aten::hardswishx3"


# -- resuming a run with failed cells exits 3, as the run did ----------------------------------


def _failing_at_96(monkeypatch: pytest.MonkeyPatch, message: str = "simulated failure") -> None:
    """Static measurement of every cell at 96 px raises ``RuntimeError(message)``."""
    import archbench.cells

    real = archbench.cells.static_columns

    def fail_at_96(model: torch.nn.Module, x: torch.Tensor, *args: object) -> dict[str, object]:
        if x.shape[-1] == 96:
            raise RuntimeError(message)
        return real(model, x, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(archbench.cells, "static_columns", fail_at_96)


def test_resume_of_a_complete_run_with_failed_cells_exits_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_at_96(monkeypatch)
    argv = ["run", "--variants", "shufflenetv2_x0_5", "--resolutions", "64,96", "--metrics", "params",
            "--out", str(tmp_path)]
    assert main(argv) == 3
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "already complete; nothing to measure" in err and "1 cell(s) failed or were skipped" in err


def test_resume_that_finishes_a_run_with_failed_cells_exits_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_at_96(monkeypatch)
    settings = RunSettings(variants=("shufflenetv2_x0_5",), resolutions=(64, 96, 128), metrics=("params",))
    with pytest.raises(KeyboardInterrupt):
        Runner(settings, tmp_path, progress=InterruptAfter(3)).run()  # 64 ok, 96 failed, interrupted at 128
    assert [r["status"] for r in load(tmp_path).records] == ["ok", "failed"]
    assert main(["run", "--resume", str(tmp_path)]) == 3
    final = load(tmp_path)
    assert final.complete and [r["status"] for r in final.records] == ["ok", "failed", "ok"]
    assert not (tmp_path / ".archbench.lock").exists()
