"""The Ray backend: a private instance on 127.0.0.1 only, and a `ray start --head` process
on 127.0.0.1 joined by address. Skipped when Ray is not installed (`archbench[ray]`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

import archbench
from archbench.cli import main
from archbench.settings import RunSettings
from archbench.spaces import sample_names

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

from archbench.ray_backend import TIMER, RayBackend  # noqa: E402

NAMES = tuple(sample_names(archbench.default_registry().space("esnet_ratio"), 2, seed=11))
STATIC = "params,macs,memory"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_addresses(pids: set[int]) -> list[str]:
    """Local addresses of the TCP sockets the given processes listen on (``ss``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            found.append(line.split()[3])
    return found


def records(folder: Path) -> list[dict[str, Any]]:
    rows = json.loads((folder / "results.json").read_text())["records"]
    return sorted(({k: v for k, v in r.items() if k not in ("host", "model_state")} for r in rows),
                  key=lambda r: (r["variant"], r["resolution"]))


def sweep(out: Path, *extra: str) -> int:
    return main(["sweep", "esnet_ratio", "--samples", "2", "--seed", "11", "--no-registered", "--resolutions", "64",
                 "--metrics", STATIC, "--out", str(out), *extra])


def test_private_instance_matches_local_static_records_and_times_one_cell_at_a_time(tmp_path: Path) -> None:
    assert sweep(tmp_path / "local") == 0
    assert sweep(tmp_path / "ray", "--backend", "ray") == 0
    assert records(tmp_path / "ray") == records(tmp_path / "local")
    assert not ray.is_initialized()

    settings = RunSettings(variants=NAMES, resolutions=(64,), metrics=("latency",), threads=1)
    jobs = [{"settings": settings.to_json(), "specs": [], "variant": v, "resolution": 64, "form": "eager"}
            for v in (*NAMES, *NAMES)]
    backend = RayBackend(workers=2)
    temp_dir = backend._temp_dir
    try:
        assert ray.cluster_resources()[TIMER] == 1
        pids = {int(p) for p in subprocess.run(["pgrep", "-f", "gcs_server|raylet"], capture_output=True,
                                                text=True).stdout.split()}
        addresses = listening_addresses(pids)
        assert addresses and all("127.0.0.1" in a for a in addresses), addresses
        outcomes = [outcome for _, outcome in backend.timed(jobs)]
    finally:
        backend.close()
    assert temp_dir is not None and not os.path.exists(temp_dir)
    assert all(isinstance(o, dict) and o["records"][0]["status"] == "ok" for o in outcomes), outcomes
    assert all(o["records"][0]["threads"] == 1 for o in outcomes)
    spans = sorted((o["start"], o["end"]) for o in outcomes)
    assert all(end <= next_start for (_, end), (next_start, _) in pairwise(spans))


@pytest.fixture
def head() -> Iterator[str]:
    """A `ray start --head --block` process on 127.0.0.1 declaring the timer; stopped afterwards
    by terminating that process (never `ray stop`, which would stop every Ray on the machine)."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="abh-")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    command = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp}",
               "--include-dashboard=false", f"--resources={json.dumps({TIMER: 1, 'xeon': 1})}", "--disable-usage-stats"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_sweep_joins_a_head_by_address(head: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep(tmp_path / "joined", "--backend", "ray", "--address", head, "--on", "xeon") == 0
    assert len(records(tmp_path / "joined")) == 2
    assert sweep(tmp_path / "other", "--backend", "ray", "--address", head, "--on", "arm") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no node of the Ray cluster declares the label 'arm'" in err
    assert not ray.is_initialized()


def test_unreachable_address_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep(tmp_path / "x", "--backend", "ray", "--address", f"127.0.0.1:{free_port()}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("archbench: error: cannot reach the Ray cluster at 127.0.0.1:") and "\n" not in err
    assert not (tmp_path / "x").exists()
