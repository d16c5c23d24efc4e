"""The folder a run writes into: checked before anything is measured, and locked while written.

``check_out_folder`` rejects an output folder that is a file, lies under a file, or
cannot be created or written, before any cell is measured. ``refuse_earlier_run``
keeps ``archbench run --out D`` from silently replacing the run already in ``D``
(``--resume D``, a new folder or ``--overwrite`` are the ways forward), and
``clear_earlier_run`` removes that run's files when ``--overwrite`` asks for it.

``run_lock(folder)`` holds ``folder/.archbench.lock`` while a run or a resume writes
there. The file is created atomically (``O_CREAT | O_EXCL``) and holds the writer's
pid, host and start time as JSON; a second writer is refused with those facts. A lock
left by a killed run on this host (its pid is no longer alive) is reported on stderr
and taken over; a lock from another host is never taken over (the user is told which
file to delete). The lock goes when the ``with`` block ends, however it ends (Ctrl-C
and SIGTERM included, as the CLI turns SIGTERM into ``KeyboardInterrupt``); folders
the lock created are removed again if nothing was written into them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from archbench.errors import ArchbenchError

LOCK_NAME = ".archbench.lock"
RESULTS_NAME = "results.json"


def _existing_ancestor(folder: Path) -> Path:
    """``folder`` itself if it exists, else its nearest existing ancestor."""
    path = folder
    try:
        while not path.exists() and not path.is_symlink() and path != path.parent:
            path = path.parent
    except OSError as exc:
        raise ArchbenchError(f"output folder {folder} cannot be checked: {exc.strerror or exc}") from None
    return path


def check_out_folder(folder: Path) -> None:
    """``ArchbenchError`` unless ``folder`` is a writable folder or can be created as one.

    Writes nothing; ``run_lock`` creates the folder.
    """
    found = _existing_ancestor(folder)
    if found == folder:
        if not folder.is_dir():
            raise ArchbenchError(f"output folder {folder} is an existing file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ArchbenchError(f"output folder {folder} is not writable")
        return
    if not found.is_dir():
        raise ArchbenchError(f"output folder {folder} cannot be created: {found} is a file, not a folder")
    if not os.access(found, os.W_OK | os.X_OK):
        raise ArchbenchError(f"output folder {folder} cannot be created: {found} is not writable")


def refuse_earlier_run(folder: Path, overwrite: bool) -> None:
    """``ArchbenchError`` if ``folder`` already holds a run and ``overwrite`` is not given."""
    if not overwrite and (folder / RESULTS_NAME).exists():
        raise ArchbenchError(
            f"{folder} already holds a run ({folder / RESULTS_NAME}); finish it with "
            f"`archbench run --resume {folder}`, choose a new --out folder, or pass --overwrite to replace it")


def clear_earlier_run(folder: Path) -> list[str]:
    """Remove the files of the run in ``folder`` (results, report, plots); the names removed."""
    from archbench.render.plots import PLOT_FILES
    from archbench.runner import ARTIFACTS_FOLDER

    removed = []
    if (folder / ARTIFACTS_FOLDER).is_dir():  # --keep-artifacts
        shutil.rmtree(folder / ARTIFACTS_FOLDER)
        removed.append(ARTIFACTS_FOLDER)
    for pattern in (RESULTS_NAME, "results.csv", "report.md", *PLOT_FILES):  # what a run writes
        for path in sorted(folder.glob(pattern)):
            with suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
    return removed


# -- the lock -----------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _read(lock: Path) -> dict[str, Any] | None:
    """The lock's JSON, or None if it is unreadable or not a lock archbench wrote."""
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    pid = data.get("pid") if isinstance(data, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
        return None
    return data


def _holder(info: dict[str, Any]) -> str:
    return f"pid {info['pid']}, started at {info.get('started', '?')}, on host {info.get('host', '?')}"


def _create(lock: Path, content: str) -> bool:
    """Create ``lock`` with ``content`` atomically; False if it already exists."""
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ArchbenchError(f"cannot create the lock file {lock}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    return True


def _take_over(lock: Path, stale: dict[str, Any]) -> None:
    """Remove the stale ``lock``, unless another process replaced it meanwhile."""
    aside = lock.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # another process took it over first
    if _read(aside) == stale:
        aside.unlink(missing_ok=True)
        return
    # a fresh lock was moved aside: put it back (link fails if yet another one exists)
    with suppress(OSError):
        os.link(aside, lock)
    aside.unlink(missing_ok=True)


def _acquire(folder: Path, content: str, host: str) -> None:
    lock = folder / LOCK_NAME
    for _ in range(5):
        if _create(lock, content):
            return
        info = _read(lock)
        if info is None:
            raise ArchbenchError(f"{folder} holds a lock file that is not archbench's or is unreadable; "
                                 f"if no archbench process is writing there, delete {lock}")
        if info.get("host") != host:
            raise ArchbenchError(f"another archbench process ({_holder(info)}) is writing in {folder}; "
                                 f"if it is no longer running, delete {lock}")
        if _pid_alive(info["pid"]):
            raise ArchbenchError(f"another archbench process ({_holder(info)}) is writing in {folder}; "
                                 "wait for it to finish, or choose another folder")
        print(f"archbench: removing a stale lock left by pid {info['pid']} (started at {info.get('started', '?')}), "
              f"which is no longer running: {lock}", file=sys.stderr)
        _take_over(lock, info)
    raise ArchbenchError(f"could not take the lock {lock}: other archbench processes keep taking it")


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the folders created, deepest first."""
    missing = []
    path = folder
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArchbenchError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    return missing


@contextmanager
def run_lock(folder: Path, *, create: bool = True) -> Iterator[dict[str, Any]]:
    """Hold ``folder``'s lock for the ``with`` block; yields what the lock file records.

    ``create``: make the folder if it does not exist (else it must exist).
    """
    created = _make_folder(folder) if create else []
    host = socket.gethostname()
    info = {"pid": os.getpid(), "host": host, "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex}
    lock = folder / LOCK_NAME
    try:
        _acquire(folder, json.dumps(info) + "\n", host)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield info
    finally:
        if _read(lock) == info:  # never remove a lock that is not this one
            lock.unlink(missing_ok=True)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            return
