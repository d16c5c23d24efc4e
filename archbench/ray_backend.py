"""The Ray backend of ``archbench sweep`` (``pip install 'archbench[ray]'``).

``--backend ray`` alone starts a private Ray instance on this machine, bound to the
loopback address only (``127.0.0.1``; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, without
which Ray 2.60 replaced the address with the machine's routable one and listened on
every interface), without a dashboard, with a small object store (results are small)
and its session files in a temporary folder that is removed when the sweep ends.
``--address HOST:PORT`` joins an existing cluster instead (one that cannot be reached
within ``CONNECT_TIMEOUT_S`` is one error line); it is left running.

Scheduling. Static jobs are tasks of one CPU each, anywhere in the cluster, retried
once if their worker dies. Timed jobs are tasks that take the custom resource
``archbench_timer`` (each node declares one: ``ray start ... --resources='{"archbench_timer": 1}'``),
so no node ever runs two timed cells at a time, and ``threads`` CPUs; ``--on LABEL``
also asks for a sliver of the custom resource ``LABEL``, which only the nodes of that
kind declare (``--resources='{"archbench_timer": 1, "LABEL": 1}'``). Threads are set
inside each task (``torch.set_num_threads``, recorded), not left to Ray's
``OMP_NUM_THREADS``. Timed tasks are never retried: a node that dies fails its cells
with the reason, and the sweep goes on. Results stream back as tasks finish
(``ray.wait``) and the sweep saves each one at once.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from archbench.errors import ArchbenchError
from archbench.sweep_jobs import static_job, timed_job

TIMER = "archbench_timer"
#: Seconds to wait for a cluster given with ``--address`` to answer.
CONNECT_TIMEOUT_S = 5.0
#: The private instance's object store: results are small, and Ray would otherwise reserve GBs of /dev/shm.
OBJECT_STORE_BYTES = 128 * 2**20
#: How much of ``--on LABEL`` a timed task asks for (any node declaring the label has enough).
LABEL_SHARE = 0.001
LOOPBACK = "127.0.0.1"
#: Off, Ray keeps every socket of a local instance on the loopback address (Ray 2.60).
CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

Job = dict[str, Any]


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ArchbenchError("--backend ray needs Ray: pip install 'archbench[ray]'") from None
    return ray


def loopback_only(ray: Any) -> dict[str, Any]:
    """Make the Ray instance started next in this process bind to 127.0.0.1 only; what to restore.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` at import (``ray_constants``) and its
    servers inherit the environment, so both are set.
    """
    from ray._private import ray_constants

    saved = {"env": os.environ.get(CLUSTER_ENV), "constant": ray_constants.ENABLE_RAY_CLUSTER}
    os.environ[CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    return saved


def restore_addressing(ray: Any, saved: dict[str, Any]) -> None:
    from ray._private import ray_constants

    if saved["env"] is None:
        os.environ.pop(CLUSTER_ENV, None)
    else:
        os.environ[CLUSTER_ENV] = saved["env"]
    ray_constants.ENABLE_RAY_CLUSTER = saved["constant"]


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """One error line unless something accepts connections at ``address`` (``HOST:PORT``)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ArchbenchError(f"--address must be HOST:PORT (the head's GCS address), got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ArchbenchError(f"cannot reach the Ray cluster at {address}: {why}") from None


class RayBackend:
    """Sweep jobs as Ray tasks (see the module docstring)."""

    name = "ray"

    def __init__(self, workers: int, address: str | None = None, on: str | None = None, threads: int = 1) -> None:
        ray = import_ray()
        self.ray, self.on, self.threads = ray, on, threads
        self._temp_dir: str | None = None
        self._restore: dict[str, Any] | None = None
        if address is not None:
            check_reachable(address)
            local = address.rpartition(":")[0] in ("127.0.0.1", "localhost")
            if local:  # a head on the loopback address (tests, CI): this driver stays there too
                self._restore = loopback_only(ray)
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     **({"_node_ip_address": LOOPBACK} if local else {}))
        else:
            self._restore = loopback_only(ray)
            self._temp_dir = tempfile.mkdtemp(prefix="abray-")  # short: Ray's socket paths must fit 107 bytes
            ray.init(num_cpus=max(workers, threads), resources={TIMER: 1}, include_dashboard=False,
                     _node_ip_address=LOOPBACK, _temp_dir=self._temp_dir, object_store_memory=OBJECT_STORE_BYTES,
                     log_to_driver=False, configure_logging=False)
        self._check_resources()
        resources = {TIMER: 1.0, **({on: LABEL_SHARE} if on else {})}
        self._static = ray.remote(static_job).options(num_cpus=1, max_retries=1)
        self._timed = ray.remote(timed_job).options(num_cpus=threads, resources=resources, max_retries=0)

    def _check_resources(self) -> None:
        """One error line when no node can take a timed task (no timer resource, no node with
        the ``--on`` label, or fewer CPUs than ``--threads``)."""
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        timers = [n["Resources"] for n in nodes if n["Resources"].get(TIMER, 0) >= 1]
        if not timers:
            self.close()
            raise ArchbenchError(f"no node of the Ray cluster declares the resource {TIMER}; start each node with "
                                 f"ray start ... --resources='{{\"{TIMER}\": 1}}'")
        if self.on and not any(r.get(self.on, 0) > 0 for r in timers):
            self.close()
            raise ArchbenchError(f"no node of the Ray cluster declares the label {self.on!r} (--on) beside {TIMER}")
        if not any(r.get("CPU", 0) >= self.threads for r in timers):
            self.close()
            raise ArchbenchError(f"no timing node of the Ray cluster has {self.threads} CPUs for --threads")

    def _stream(self, refs: dict[Any, Job]) -> Iterator[tuple[Job, dict[str, Any] | BaseException]]:
        pending = list(refs)
        try:
            while pending:
                ready, pending = self.ray.wait(pending, num_returns=1)
                for ref in ready:
                    try:
                        yield refs[ref], self.ray.get(ref)
                    except Exception as exc:  # a dead worker or node, or a lost object
                        yield refs[ref], exc
        finally:
            for ref in pending:  # interrupted: stop what is still queued or running
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:  # already finished, or its node is gone
                    continue

    def static(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any] | BaseException]]:
        return self._stream({self._static.remote(job): job for job in jobs})

    def timed(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any] | BaseException]]:
        return self._stream({self._timed.remote(job): job for job in jobs})

    def close(self) -> None:
        """Disconnect (and stop the private instance, removing its session files)."""
        if self.ray.is_initialized():
            self.ray.shutdown()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        if self._restore is not None:
            restore_addressing(self.ray, self._restore)
            self._restore = None
