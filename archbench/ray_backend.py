"""The Ray backend of ``archbench sweep`` (``pip install 'archbench[ray]'``).

``--backend ray`` alone starts a private Ray instance on this machine, bound to the
loopback address only (``127.0.0.1``; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, without
which Ray 2.60 replaced the address with the machine's routable one and listened on
every interface), without a dashboard, with a small object store (results are small)
and its session files in a temporary folder that is removed when the sweep ends.
``--address HOST:PORT`` joins an existing cluster instead (one that cannot be reached
within ``CONNECT_TIMEOUT_S``, or that refuses this driver, is one error line); it is left
running. A head on 127.0.0.1 gets this machine's Ray token if there is one (``use_local_token``).

Scheduling. Static jobs are tasks of one CPU each, anywhere in the cluster, retried
once if their worker dies. Timed jobs are tasks that take the custom resource
``archbench_timer`` (each node declares one: ``ray start ... --resources='{"archbench_timer": 1}'``),
so no node ever runs two timed cells at a time, and ``threads`` CPUs. A timed job
labelled ``job["on"] = LABEL`` (``--on LABEL``, or ``--on A,B``: a sweep's jobs may carry
different labels, all submitted together) also asks for a sliver of the custom resource
``LABEL``, which only the nodes of that kind declare
(``--resources='{"archbench_timer": 1, "LABEL": 1}'``); every label is checked at
start. Threads are set inside each task (``torch.set_num_threads``, recorded), not left
to Ray's ``OMP_NUM_THREADS``. Timed tasks are never retried: a worker or node that dies
fails its cell with a one-line reason (``lost_job``), the cells queued behind it go to
the other nodes of their label, and the cells of a label whose nodes all died fail too
(checked every ``POLL_S`` while nothing finishes) instead of waiting for ever. Results
stream back as tasks finish (``ray.wait``) and the sweep saves each one at once.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from archbench.errors import ArchbenchError
from archbench.sweep_jobs import JobLost, static_job, timed_job

TIMER = "archbench_timer"
#: Seconds to wait for a cluster given with ``--address`` to answer.
CONNECT_TIMEOUT_S = 5.0
#: The private instance's object store: results are small, and Ray would otherwise reserve GBs of /dev/shm.
OBJECT_STORE_BYTES = 128 * 2**20
#: How much of ``--on LABEL`` a timed task asks for (any node declaring the label has enough).
LABEL_SHARE = 0.001
#: Seconds between checks, while no job finishes, for jobs that no live node can take any more.
POLL_S = 5.0
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


def use_local_token() -> None:
    """Authenticate with this machine's Ray token (``~/.ray/auth_token``) if it has one, as Ray
    itself does for a cluster it finds on this machine (``address="auto"``) but not for one
    given by address: ``ray start --head`` turns token authentication on whenever that file
    exists (Ray 2.60; ``ray.init()`` writes it), so a head on 127.0.0.1 would refuse us."""
    import logging

    try:
        from ray._private.authentication import authentication_token_setup as auth
    except ImportError:  # a Ray without token authentication
        return
    quiet = logging.getLogger(auth.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # not its "token authentication is enabled" warning
    try:
        auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


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


def unplaceable(needs: Mapping[str, float], nodes: Sequence[Mapping[str, Any]]) -> bool:
    """Whether no live node of ``nodes`` (``ray.nodes()``) has all the resources in ``needs``."""
    return not any(node.get("Alive") and all(node["Resources"].get(k, 0) >= v for k, v in needs.items())
                   for node in nodes)


def lost_job(ray: Any, exc: BaseException) -> BaseException:
    """What kept a Ray task from returning, as the sweep records it: the job's own exception
    for an error raised inside it, ``JobLost`` (one line) for a worker or node that died."""
    errors = ray.exceptions
    if isinstance(exc, errors.RayTaskError) and isinstance(exc.cause, BaseException):
        return exc.cause
    deaths = (
        ((errors.NodeDiedError, errors.LocalRayletDiedError), "the Ray node running this cell died"),
        ((errors.WorkerCrashedError, errors.ActorDiedError),
         "the Ray worker running this cell died (killed, out of memory, or its node died)"),
        ((errors.OutOfMemoryError,), "Ray killed the worker running this cell: its node ran out of memory"),
        ((errors.ObjectLostError,), "this cell's result was lost with the Ray node that held it"),
    )
    for kinds, reason in deaths:
        if isinstance(exc, kinds):
            return JobLost(f"{type(exc).__name__}: {reason}")
    return exc


class RayBackend:
    """Sweep jobs as Ray tasks (see the module docstring)."""

    name = "ray"

    def __init__(self, workers: int, address: str | None = None, labels: Sequence[str] = (),
                 threads: int = 1) -> None:
        ray = import_ray()
        self.ray, self.labels, self.threads = ray, tuple(labels), threads
        self._temp_dir: str | None = None
        self._restore: dict[str, Any] | None = None
        if address is not None:
            self._join(address)
        else:
            self._restore = loopback_only(ray)
            self._temp_dir = tempfile.mkdtemp(prefix="abray-")  # short: Ray's socket paths must fit 107 bytes
            ray.init(num_cpus=max(workers, threads), resources={TIMER: 1}, include_dashboard=False,
                     _node_ip_address=LOOPBACK, _temp_dir=self._temp_dir, object_store_memory=OBJECT_STORE_BYTES,
                     log_to_driver=False, configure_logging=False)
        self._check_resources()
        self._static = ray.remote(num_cpus=1, max_retries=1)(static_job)
        self._timed = ray.remote(num_cpus=threads, max_retries=0)(timed_job)

    def _join(self, address: str) -> None:
        """Connect to the cluster at ``address``; one error line if it cannot be reached or refuses us."""
        check_reachable(address)
        local = address.rpartition(":")[0] in ("127.0.0.1", "localhost")
        if local:  # a head on the loopback address (tests, CI): this driver stays there too
            self._restore = loopback_only(self.ray)
            use_local_token()
        try:
            self.ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                          **({"_node_ip_address": LOOPBACK} if local else {}))
        except (ConnectionError, self.ray.exceptions.AuthenticationError) as exc:
            self.close()
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ArchbenchError(f"cannot join the Ray cluster at {address}: {why} (a cluster with token "
                                 "authentication needs its token here too: RAY_AUTH_MODE=token, and "
                                 "~/.ray/auth_token or RAY_AUTH_TOKEN)") from None

    def timed_needs(self, label: str | None) -> dict[str, float]:
        """The resources of a timed task: its threads, the node's timer and a sliver of ``label``."""
        return {"CPU": float(self.threads), TIMER: 1.0, **({label: LABEL_SHARE} if label else {})}

    def _check_resources(self) -> None:
        """One error line (and disconnected) when some timed task could not be placed."""
        problem = self._resource_problem(self.ray.nodes())
        if problem is not None:
            self.close()
            raise ArchbenchError(problem)

    def _resource_problem(self, nodes: Sequence[Mapping[str, Any]]) -> str | None:
        """Why no live node could take some timed task (no timer resource, no node with an
        ``--on`` label, or fewer CPUs than ``--threads``); None if every one can be placed."""
        if unplaceable({TIMER: 1.0}, nodes):
            return (f"no node of the Ray cluster declares the resource {TIMER}; start each node with "
                    f"ray start ... --resources='{{\"{TIMER}\": 1}}'")
        for label in self.labels:
            if unplaceable({TIMER: 1.0, label: LABEL_SHARE}, nodes):
                return f"no node of the Ray cluster declares the label {label!r} (--on) beside {TIMER}"
        for timed_label in self.labels or (None,):
            if unplaceable(self.timed_needs(timed_label), nodes):
                where = f" of label {timed_label!r}" if timed_label else ""
                return f"no timing node{where} of the Ray cluster has {self.threads} CPUs for --threads"
        return None

    def _stream(self, refs: dict[Any, Job],
                needs: Callable[[Job], dict[str, float]]) -> Iterator[tuple[Job, dict[str, Any] | BaseException]]:
        """Each job's outcome as it arrives. Every ``POLL_S`` without one, the jobs no live node
        can take any more (all the nodes of their label died) fail instead of waiting forever."""
        pending = list(refs)
        try:
            while pending:
                ready, pending = self.ray.wait(pending, num_returns=1, timeout=POLL_S)
                for ref in ready:
                    try:
                        yield refs[ref], self.ray.get(ref)
                    except Exception as exc:  # an error in the job, a dead worker or node, a lost object
                        yield refs[ref], lost_job(self.ray, exc)
                if not ready and pending:
                    nodes = self.ray.nodes()
                    stranded = [ref for ref in pending if unplaceable(needs(refs[ref]), nodes)]
                    for ref in stranded:
                        pending.remove(ref)
                        self._cancel(ref)
                        yield refs[ref], JobLost("no live node of the Ray cluster can take this cell any more "
                                                 f"(the nodes with {', '.join(sorted(needs(refs[ref])))} died)")
        finally:
            for ref in pending:  # interrupted: stop what is still queued or running
                self._cancel(ref)

    def _cancel(self, ref: Any) -> None:
        try:
            self.ray.cancel(ref, force=True)
        except Exception:  # already finished, or its node is gone
            return

    def static(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any] | BaseException]]:
        return self._stream({self._static.remote(job): job for job in jobs}, lambda job: {"CPU": 1.0})

    def timed(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any] | BaseException]]:
        """Each job on a node with a free timer (and its ``job["on"]`` label, if any); all submitted at once."""
        refs = {self._timed.options(resources=self._custom_resources(job.get("on"))).remote(job): job for job in jobs}
        return self._stream(refs, lambda job: self.timed_needs(job.get("on")))

    def _custom_resources(self, label: str | None) -> dict[str, float]:
        return {k: v for k, v in self.timed_needs(label).items() if k != "CPU"}

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
