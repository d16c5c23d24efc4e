"""The Ray backend: a private instance on 127.0.0.1 only, and a `ray start --head` process
on 127.0.0.1 joined by address. Skipped when Ray is not installed (`archbench[ray]`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

import archbench
from archbench.cli import main
from archbench.settings import RunSettings
from archbench.spaces import sample_names
from archbench.sweep import failure_of

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

from archbench.ray_backend import (  # noqa: E402
    LOOPBACK,
    OBJECT_STORE_BYTES,
    TIMER,
    RayBackend,
    loopback_only,
    lost_job,
    restore_addressing,
    unplaceable,
)
from archbench.sweep_jobs import JobLost  # noqa: E402

NAMES = tuple(sample_names(archbench.default_registry().space("esnet_ratio"), 2, seed=11))
STATIC = "params,macs,memory"
ROOT = Path(__file__).resolve().parent.parent


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


@dataclass
class NodeKinds:
    """A cluster on 127.0.0.1: a head with no CPUs (it never runs a job) and one worker node per
    label, each declaring one timer and its label; ``raylets[label]``: that node's raylet pid."""

    address: str
    nodes: dict[str, Any]  # label -> ray._private.node.Node
    raylets: dict[str, int]

    def label_of(self, pids: Sequence[int]) -> str | None:
        """The label of the node whose processes include one of ``pids`` (a worker's ancestors)."""
        return next((label for label, raylet in self.raylets.items() if raylet in pids), None)


@contextmanager
def ray_cluster(labels: Sequence[str]) -> Iterator[NodeKinds]:
    """``ray.cluster_utils.Cluster`` on 127.0.0.1 only (``ray start`` refuses worker nodes with
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and without it binds the machine's routable address);
    its nodes are this process's children, its files in a temporary folder removed afterwards."""
    from ray._private.ray_constants import PROCESS_TYPE_RAYLET
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="abc-")
    env = {"RAY_TMPDIR": temp, "PYTHONPATH": str(ROOT)}  # Ray's default folder; the gated builder's module
    saved_env, saved_addressing = {k: os.environ.get(k) for k in env}, loopback_only(ray)
    os.environ.update(env)
    options = {"node_ip_address": LOOPBACK, "temp_dir": os.path.join(temp, "ray"),
               "object_store_memory": OBJECT_STORE_BYTES}
    os.mkdir(options["temp_dir"])
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={**options, "num_cpus": 0, "include_dashboard": False})
        nodes = {label: cluster.add_node(**options, num_cpus=1, resources={TIMER: 1, label: 1}) for label in labels}
        cluster.wait_for_nodes()
        yield NodeKinds(cluster.address, nodes,
                        {label: node.all_processes[PROCESS_TYPE_RAYLET][0].process.pid for label, node in nodes.items()})
    finally:
        if cluster is not None:
            cluster.shutdown()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        restore_addressing(ray, saved_addressing)
        shutil.rmtree(temp, ignore_errors=True)


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
    joined = json.loads((tmp_path / "joined" / "results.json").read_text())  # one label: the run is the folder
    assert joined["environment"]["sweep"]["on"] == "xeon" and {r["node_label"] for r in joined["records"]} == {"xeon"}
    assert not (tmp_path / "joined" / "sweep.json").exists()
    for on in ("arm", "xeon,arm"):
        assert sweep(tmp_path / "other", "--backend", "ray", "--address", head, "--on", on) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == f"archbench: error: no node of the Ray cluster declares the label 'arm' (--on) beside {TIMER}"
        assert not (tmp_path / "other").exists()
    assert not ray.is_initialized()


def test_unreachable_address_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep(tmp_path / "x", "--backend", "ray", "--address", f"127.0.0.1:{free_port()}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("archbench: error: cannot reach the Ray cluster at 127.0.0.1:") and "\n" not in err
    assert not (tmp_path / "x").exists()


# -- why a Ray task returned nothing; cells no node can take ---------------------------------------
def test_a_lost_task_says_in_one_line_what_died() -> None:
    errors = ray.exceptions
    node = lost_job(ray, errors.NodeDiedError("Task failed due to the node dying.\nNode IP: 127.0.0.1"))
    assert isinstance(node, JobLost) and failure_of(node) == "NodeDiedError: the Ray node running this cell died"
    worker = failure_of(lost_job(ray, errors.WorkerCrashedError()))
    assert worker == ("WorkerCrashedError: the Ray worker running this cell died (killed, out of memory, "
                      "or its node died)")
    cause = ValueError("bad")
    raised = errors.RayTaskError("timed_job", "Traceback ...", cause, proctitle="ray::timed_job", pid=1,
                                 ip="127.0.0.1")
    assert lost_job(ray, raised) is cause and failure_of(cause) == "ValueError: bad"


class NothingFinishes:
    """A stand-in for the ray module: the first wait finds nothing finished, later ones one job;
    of the cluster's nodes, the only one declaring the label ``arm`` is dead."""

    def __init__(self) -> None:
        self.waits, self.cancelled = 0, list[str]()

    def wait(self, refs: list[str], num_returns: int, timeout: float) -> tuple[list[str], list[str]]:
        self.waits += 1
        return ([], refs) if self.waits == 1 else (refs[:1], refs[1:])

    def get(self, ref: str) -> dict[str, Any]:
        return {"measured": ref}

    def nodes(self) -> list[dict[str, Any]]:
        return [{"Alive": True, "Resources": {"CPU": 2.0, TIMER: 1.0, "xeon": 1.0}},
                {"Alive": False, "Resources": {"CPU": 2.0, TIMER: 1.0, "arm": 1.0}}]

    def cancel(self, ref: str, force: bool) -> None:
        self.cancelled.append(ref)


def test_cells_no_live_node_can_take_fail_instead_of_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    import archbench.ray_backend as ray_backend

    monkeypatch.setattr(ray_backend, "POLL_S", 0.01)
    fake = NothingFinishes()
    backend = object.__new__(RayBackend)  # the stream alone, over the stand-in
    backend.ray, backend.labels, backend.threads = fake, ("xeon", "arm"), 1
    refs = {"on-arm": {"variant": "a", "on": "arm"}, "on-xeon": {"variant": "b", "on": "xeon"}}
    outcomes = [(job["variant"], outcome) for job, outcome in
                backend._stream(refs, lambda job: backend.timed_needs(job.get("on")))]
    assert [variant for variant, _ in outcomes] == ["a", "b"] and fake.cancelled == ["on-arm"]
    assert failure_of(outcomes[0][1]) == ("no live node of the Ray cluster can take this cell any more "
                                          f"(the nodes with CPU, {TIMER}, arm died)")
    assert outcomes[1][1] == {"measured": "on-xeon"}
    assert not unplaceable({TIMER: 1.0, "xeon": 0.001}, fake.nodes())


# -- a cluster of two kinds of node on 127.0.0.1 ----------------------------------------------------
def process_tree(root: int) -> set[int]:
    """``root`` and every process descending from it (/proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return tree


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def gate_spec(folder: Path, gates: dict[str, Path]) -> tuple[Path, Path]:
    """A spec file of the space ``gates``, whose registered variants (one per key of ``gates``,
    in order) are built by ``tests.ray_gate:build_gated``: each build, timing a cell, logs its
    processes to the returned log file and waits for its gate file."""
    log = folder / "builds.jsonl"
    text = []
    for name, gate in gates.items():
        text += ["[[variant]]", f'name = "{name}"', 'family = "gates"', 'kind = "backbone"',
                 'builder = "tests.ray_gate:build_gated"',
                 f'args = {{ log = {json.dumps(str(log))}, gate = {json.dumps(str(gate))}, tag = "{name}" }}', ""]
    text += ["[[space]]", 'name = "gates"', f'base = "{next(iter(gates))}"',
             f"args.tag = {{ choices = {json.dumps(list(gates))} }}",
             f"args.gate = {{ choices = {json.dumps(sorted({str(g) for g in gates.values()}))} }}"]
    spec = folder / "gates.toml"
    spec.write_text("\n".join(text) + "\n")
    return spec, log


def builds(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def sweep_gates(spec: Path, cluster: NodeKinds, out: Path, *extra: str) -> int:
    return main(["--specs", str(spec), "sweep", "gates", "--samples", "0", "--resolutions", "32",
                 "--metrics", "params,latency", "--backend", "ray", "--address", cluster.address, "--out", str(out),
                 *extra])


def until(found: Any, timeout: float = 60) -> Any:
    """``found()`` once it is truthy; None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.1)
    return None


def test_two_kinds_of_node_time_one_sweep_together_into_a_run_folder_each(tmp_path: Path) -> None:
    go = tmp_path / "go"
    spec, log = gate_spec(tmp_path, {"g1": go, "g2": go})
    seen: dict[str, Any] = {}
    with ray_cluster(["kind_a", "kind_b"]) as cluster:
        def open_once_both_kinds_build() -> None:
            """Open the gate once a cell of each label is being timed, both at once (else after 60 s)."""
            try:
                seen["at once"] = until(lambda: {cluster.label_of(b["ancestors"]) for b in builds(log)} >=
                                        {"kind_a", "kind_b"})
                seen["listening"] = listening_addresses(process_tree(os.getpid()))  # the driver, every node
            finally:
                go.touch()

        opener = threading.Thread(target=open_once_both_kinds_build)
        opener.start()
        code = sweep_gates(spec, cluster, tmp_path / "two", "--on", "kind_a,kind_b")
        opener.join()
    assert code == 0 and seen["at once"]
    assert seen["listening"] and all(a.rpartition(":")[0] in ("127.0.0.1", "[::ffff:127.0.0.1]")
                                     for a in seen["listening"]), seen["listening"]
    built_on = sorted((b["tag"], cluster.label_of(b["ancestors"])) for b in builds(log))
    assert built_on == [("g1", "kind_a"), ("g1", "kind_b"), ("g2", "kind_a"), ("g2", "kind_b")]
    runs = {label: json.loads((tmp_path / "two" / label / "results.json").read_text()) for label in cluster.raylets}
    for label, run in runs.items():
        assert run["complete"] and run["environment"]["sweep"]["on"] == label
        assert sorted((r["variant"], r["status"], r["node_label"]) for r in run["records"]) == [
            ("g1", "ok", label), ("g2", "ok", label)]
        assert all(r["latency_ms_median"] > 0 for r in run["records"])
    params = {label: sorted((r["variant"], r["params"]) for r in run["records"]) for label, run in runs.items()}
    assert params["kind_a"] == params["kind_b"] and all(n > 0 for _, n in params["kind_a"])
    assert json.loads((tmp_path / "two" / "sweep.json").read_text())["on"] == ["kind_a", "kind_b"]


def test_a_node_killed_while_timing_a_cell_fails_that_cell_and_the_sweep_goes_on(tmp_path: Path) -> None:
    go, never = tmp_path / "go", tmp_path / "never"
    spec, log = gate_spec(tmp_path, {"doomed": never, "t1": go, "t2": go, "t3": go})
    killed: dict[str, Any] = {}
    with ray_cluster(["kind_a", "kind_b"]) as cluster:
        def kill_the_node_timing_doomed() -> None:
            """Once ``doomed`` is being timed, kill every process of its node; then let the others go."""
            try:
                build = until(lambda: next((b for b in builds(log) if b["tag"] == "doomed"), None))
                label = cluster.label_of(build["ancestors"])
                killed["tree"] = process_tree(cluster.raylets[label])  # the raylet, its workers and agents
                for pid in killed["tree"]:
                    os.kill(pid, signal.SIGKILL)
                killed["label"] = label
            finally:
                go.touch()

        killer = threading.Thread(target=kill_the_node_timing_doomed)
        killer.start()
        code = sweep_gates(spec, cluster, tmp_path / "killed")
        killer.join()
    assert "label" in killed, "the cell of doomed never started"
    assert until(lambda: not any(map(alive, killed["tree"])), 10)
    survivor = next(label for label in cluster.raylets if label != killed["label"])
    assert code == 3  # one cell failed
    result = json.loads((tmp_path / "killed" / "results.json").read_text())
    records = {r["variant"]: r for r in result["records"]}
    reason = records["doomed"]["reason"]
    assert records["doomed"]["status"] == "failed" and "\n" not in reason
    assert reason in ("NodeDiedError: the Ray node running this cell died",
                      "WorkerCrashedError: the Ray worker running this cell died (killed, out of memory, or its "
                      "node died)"), reason
    assert result["complete"] and all(records[t]["status"] == "ok" and records[t]["latency_ms_median"] > 0
                                      for t in ("t1", "t2", "t3"))
    built_on = sorted((b["tag"], cluster.label_of(b["ancestors"])) for b in builds(log))
    assert built_on == [("doomed", killed["label"]), ("t1", survivor), ("t2", survivor), ("t3", survivor)]
