"""A Ray cluster of several nodes on this machine for the Ray backend's tests and benchmark, and a guard that
turns a hang into a failure.

The cluster is Ray's own multi-node harness (``ray.cluster_utils.Cluster``): a head node without CPUs (it
runs the cluster's services and this process's object store, as a head node does) and worker nodes, each a
raylet of its own with its own CPUs, object store and worker processes, all on the loopback address
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray use 127.0.0.1 for every node, so nothing leaves this
machine; it is set here, before Ray is imported, and inherited by the drivers the tests start).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import socket
import sys
import time

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback addresses only (see the module docstring)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

OBJECT_STORE = 96 * 2**20  # bytes per node
# A removed node is declared dead within a few seconds (the defaults take about 30).
SYSTEM_CONFIG = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_timeout_ms": 500,
                 "health_check_failure_threshold": 4}


def start_cluster(workers: int = 3, cpus: int = 1):
    """A running harness cluster: (cluster, worker nodes); this process is not connected to it."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": OBJECT_STORE,
        "_system_config": SYSTEM_CONFIG})
    nodes = [add_node(cluster, cpus) for _ in range(workers)]
    return cluster, nodes


def add_node(cluster, cpus: int = 1):
    node = cluster.add_node(num_cpus=cpus, object_store_memory=OBJECT_STORE)
    cluster.wait_for_nodes()
    return node


def wait_cpus(cpus: float, timeout: float = 60.0) -> None:
    """Until the connected cluster counts ``cpus`` CPUs (after nodes joined or left)."""
    import ray

    end = time.monotonic() + timeout
    while ray.cluster_resources().get("CPU", 0) != cpus:
        if time.monotonic() > end:
            raise TimeoutError(f"the cluster has {ray.cluster_resources().get('CPU', 0)} CPUs, not {cpus}")
        time.sleep(0.2)


def free_port() -> int:
    """A loopback port nothing listens on (for an unreachable address)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def hang_guard(seconds: float):
    """Fail (TimeoutError) a block that runs past ``seconds``; if even that cannot interrupt it, dump every
    thread's stack and exit the process a minute later, so a hang fails CI rather than blocks it."""
    def expire(signum, frame):
        raise TimeoutError(f"the test ran past its {seconds:.0f} s guard (a hang?)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds + 60, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        faulthandler.cancel_dump_traceback_later()


def running(node, task: str, timeout: float = 10.0) -> int | None:
    """The pid of a worker process of ``node`` (a harness node) running the task function ``task`` (Ray names the
    process ``ray::<task>`` while it runs one), waiting up to ``timeout`` seconds for one; None if none ran."""
    raylet = node.all_processes["raylet"][0].process.pid
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    name = fh.read().split(b"\0")[0].decode(errors="replace")
                with open(f"/proc/{pid}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == raylet and name == f"ray::{task}":
                return int(pid)
        time.sleep(0.005)
    return None
