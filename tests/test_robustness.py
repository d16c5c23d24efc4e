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
def test_signal_mid_run_saves_partial_results_and_resume_finishes(tmp_path: Path, sig: int, code: int) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "archbench", "run", "--variants", "shufflenetv2_x0_5,esnet_s",
            "--resolutions", "64,96,128", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    # wait until the latency phase has measured one cell, then interrupt
    _wait_for(out / "results.json", lambda d: any("latency_ms_median" in r for r in d["records"]))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert "interrupted:" in err and f"archbench run --resume {out}" in err and "Traceback" not in err
    partial = load(out)
    assert not partial.complete
    assert len(partial.records) == 6
    measured = {(r["variant"], r["resolution"]): r["latency_ms_median"] for r in partial.records if "latency_ms_median" in r}
    assert 1 <= len(measured) < 6
    assert "This run is incomplete" in (out / "report.md").read_text()

    assert main(["run", "--resume", str(out)]) == 0
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
    import archbench.cells

    real = archbench.cells.static_columns

    def oom_for_esnet(model: torch.nn.Module, x: torch.Tensor, *args: object) -> dict[str, object]:
        if x.shape[-1] == 96:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB. out of memory")
        return real(model, x, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(archbench.cells, "static_columns", oom_for_esnet)
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
