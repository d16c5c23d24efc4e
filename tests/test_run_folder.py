"""The run folder: checked before anything is measured, never overwritten silently, locked while written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import archbench.runner
from archbench.cli import main
from archbench.results import load
from archbench.run_folder import LOCK_NAME, check_out_folder, run_lock

QUICK = ["--variants", "shufflenetv2_x0_5", "--resolutions", "64", "--metrics", "params"]


def run(*argv: str) -> list[str]:
    return ["run", *QUICK, *argv]


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("archbench: error: ") and "Traceback" not in err, err
    return err


class Measured:
    """The cells measured: for each, whether the lock in ``folder`` held this process's pid then."""

    def __init__(self) -> None:
        self.calls: list[bool] = []
        self.folder: Path | None = None

    def lock_held(self) -> bool:
        lock = self.folder / LOCK_NAME if self.folder else None
        return lock is not None and lock.is_file() and json.loads(lock.read_text())["pid"] == os.getpid()


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> Measured:
    spy = Measured()
    real = archbench.runner.measure_cell

    def measure(*args: Any, **kwargs: Any) -> Any:
        spy.calls.append(spy.lock_held())
        return real(*args, **kwargs)

    monkeypatch.setattr(archbench.runner, "measure_cell", measure)
    return spy


def lock_file(folder: Path, pid: int, host: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- the output folder is checked before anything is measured ---------------------------


def test_out_is_an_existing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, measured: Measured) -> None:
    target = tmp_path / "taken"
    target.write_text("mine")
    err = one_line_error(capsys, run("--out", str(target)))
    assert f"output folder {target} is an existing file" in err
    assert measured.calls == [] and target.read_text() == "mine"


def test_out_under_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, measured: Measured) -> None:
    (tmp_path / "file").write_text("mine")
    err = one_line_error(capsys, run("--out", str(tmp_path / "file" / "a" / "b")))
    assert f"cannot be created: {tmp_path / 'file'} is a file" in err
    assert measured.calls == []


def test_out_that_cannot_be_created(capsys: pytest.CaptureFixture[str], tmp_path: Path, measured: Measured,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: not mode & os.W_OK and real(path, mode) if Path(path) == tmp_path else real(path, mode))
    err = one_line_error(capsys, run("--out", str(tmp_path / "new" / "out")))
    assert f"cannot be created: {tmp_path} is not writable" in err
    assert measured.calls == [] and not (tmp_path / "new").exists()


def test_out_folder_not_writable(capsys: pytest.CaptureFixture[str], tmp_path: Path, measured: Measured,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: not mode & os.W_OK and real(path, mode) if Path(path) == out else real(path, mode))
    assert f"output folder {out} is not writable" in one_line_error(capsys, run("--out", str(out)))
    assert measured.calls == [] and list(out.iterdir()) == []


def test_out_folder_with_mode_0o500(capsys: pytest.CaptureFixture[str], tmp_path: Path, measured: Measured) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: mode 0o500 does not stop writing (covered by the os.access tests)")
        assert "is not writable" in one_line_error(capsys, run("--out", str(locked)))
        assert "cannot be created" in one_line_error(capsys, run("--out", str(locked / "sub")))
        assert measured.calls == []
    finally:
        locked.chmod(0o700)


def test_check_out_folder_accepts_new_and_existing_folders(tmp_path: Path) -> None:
    check_out_folder(tmp_path)
    check_out_folder(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()  # checking writes nothing


# -- an earlier run is never overwritten silently ------------------------------------------


def test_second_run_into_a_folder_refuses_and_overwrite_replaces(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, measured: Measured
) -> None:
    measured.folder = tmp_path
    assert main(run("--out", str(tmp_path))) == 0
    before = (tmp_path / "results.json").read_text()
    capsys.readouterr()
    measured.calls.clear()
    err = one_line_error(capsys, ["run", *QUICK[:2], "--resolutions", "96", "--metrics", "params",
                                  "--out", str(tmp_path)])
    assert f"{tmp_path} already holds a run" in err
    assert f"--resume {tmp_path}" in err and "new --out folder" in err and "--overwrite" in err
    assert measured.calls == [] and (tmp_path / "results.json").read_text() == before

    (tmp_path / "latency_vs_resolution.png").write_bytes(b"a plot of the earlier run")
    (tmp_path / "notes.txt").write_text("the user's own file")
    assert main(["run", *QUICK[:2], "--resolutions", "96", "--metrics", "params", "--out", str(tmp_path),
                 "--overwrite"]) == 0
    assert [r["resolution"] for r in load(tmp_path).records] == [96]
    assert "96" in (tmp_path / "results.csv").read_text() and "64 px" not in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "latency_vs_resolution.png").exists()  # this run has no latency plot: the old one went
    assert (tmp_path / "notes.txt").read_text() == "the user's own file"
    assert measured.calls == [True]


def test_overwrite_with_bad_input_keeps_the_earlier_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(run("--out", str(tmp_path))) == 0
    before = (tmp_path / "results.json").read_text()
    capsys.readouterr()
    err = one_line_error(capsys, ["run", "--variants", "picodet_s", "--resolutions", "330", "--metrics", "params",
                                  "--out", str(tmp_path), "--overwrite"])
    assert "cannot take resolution 330" in err
    assert (tmp_path / "results.json").read_text() == before and not (tmp_path / LOCK_NAME).exists()


def test_overwrite_is_not_for_resume(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(run("--out", str(tmp_path))) == 0
    capsys.readouterr()
    assert "drop --overwrite" in one_line_error(capsys, ["run", "--resume", str(tmp_path), "--overwrite"])


# -- the lock ------------------------------------------------------------------------------


def test_lock_is_held_while_measuring_and_gone_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      measured: Measured) -> None:
    out = tmp_path / "new" / "out"
    measured.folder = out
    assert main(run("--out", str(out))) == 0
    assert measured.calls == [True]
    assert not (out / LOCK_NAME).exists() and load(out).complete


@pytest.mark.parametrize("command", ["run", "resume"])
def test_live_lock_refuses(capsys: pytest.CaptureFixture[str], tmp_path: Path, measured: Measured,
                           command: str) -> None:
    assert main(run("--out", str(tmp_path))) == 0
    before = (tmp_path / "results.json").read_text()
    capsys.readouterr()
    measured.calls.clear()
    lock = lock_file(tmp_path, os.getpid())
    argv = ["run", "--resume", str(tmp_path)] if command == "resume" else run("--out", str(tmp_path), "--overwrite")
    err = one_line_error(capsys, argv)
    assert (f"another archbench process (pid {os.getpid()}, started at 2026-01-01T00:00:00+00:00, "
            f"on host {socket.gethostname()}) is writing in {tmp_path}") in err
    assert measured.calls == [] and lock.exists() and (tmp_path / "results.json").read_text() == before


def test_lock_of_a_live_child_process_refuses(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_file(tmp_path, child.pid)
        assert f"(pid {child.pid}," in one_line_error(capsys, run("--out", str(tmp_path)))
    finally:
        child.kill()
        child.wait()
    assert main(run("--out", str(tmp_path))) == 0  # the child has exited: its lock is stale now
    assert f"removing a stale lock left by pid {child.pid}" in capsys.readouterr().err


def test_lock_from_another_host_is_never_taken_over(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lock = lock_file(tmp_path, dead_pid(), host="elsewhere.example")
    err = one_line_error(capsys, run("--out", str(tmp_path)))
    assert "on host elsewhere.example) is writing in" in err and f"delete {lock}" in err
    assert lock.exists() and not (tmp_path / "results.json").exists()


def test_unreadable_lock_is_not_taken_over(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("")
    assert f"delete {tmp_path / LOCK_NAME}" in one_line_error(capsys, run("--out", str(tmp_path)))


def test_stale_lock_is_explained_and_taken_over(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, measured: Measured) -> None:
    measured.folder = tmp_path
    pid = dead_pid()
    lock_file(tmp_path, pid)
    assert main(run("--out", str(tmp_path))) == 0
    err = capsys.readouterr().err
    stale = [line for line in err.splitlines() if line.startswith("archbench: removing")]
    assert stale == [f"archbench: removing a stale lock left by pid {pid} (started at 2026-01-01T00:00:00+00:00), "
                     f"which is no longer running: {tmp_path / LOCK_NAME}"]
    assert measured.calls == [True] and not (tmp_path / LOCK_NAME).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(LOCK_NAME)]


def test_lock_is_gone_after_an_interrupted_run(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def ctrl_c(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(archbench.runner, "measure_cell", ctrl_c)
    assert main(run("--out", str(tmp_path))) == 130
    assert "interrupted:" in capsys.readouterr().err
    assert not (tmp_path / LOCK_NAME).exists() and not load(tmp_path).complete


def test_lock_is_gone_after_a_failed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_died(*args: object) -> None:
        raise OSError("disk died")

    monkeypatch.setattr(archbench.runner, "save", disk_died)
    with pytest.raises(OSError, match="disk died"):
        main(run("--out", str(tmp_path / "out")))
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_lock_is_gone_after_bad_input_and_a_created_folder_too(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    one_line_error(capsys, ["run", "--variants", "picodet_s", "--resolutions", "330", "--metrics", "params",
                            "--out", str(tmp_path / "a" / "b")])
    assert list(tmp_path.iterdir()) == []  # the folders the lock made are gone again


def test_run_lock_never_removes_a_lock_it_does_not_hold(tmp_path: Path) -> None:
    with run_lock(tmp_path) as info:
        assert json.loads((tmp_path / LOCK_NAME).read_text()) == info
        lock_file(tmp_path, 1, host="elsewhere.example")  # somebody replaced it by hand
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "elsewhere.example"


def test_run_lock_is_released_on_an_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), run_lock(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    with run_lock(tmp_path):  # and can be taken again
        pass
