"""Where the engine's two heavy jobs run: feature extraction and pair verification.

``local`` (the default) runs them in this process, as the feature stage and the pair
verifier always have (threads, and the GPU when there is one). ``ray`` runs them as tasks
on a Ray cluster (:mod:`matcher.backends.ray_backend`; ``pip install 'whalematch[ray]'``),
imported only when it is asked for, so the local path needs nothing new. Either way the
calling process (the driver) stays the one writer of the caches: the features and verdicts
computed elsewhere come back to it, and it writes them where the local path would.

A backend gives the feature stage and the pair verifier a ``remote`` runner (``None`` for
``local``) and describes the machines it has (:class:`Node`), which the planner
(:mod:`matcher.backends.planner`) uses to project a run's wall time.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import arg_type, env, env_value
from ..errors import BackendError, ConfigError

BACKENDS = ("local", "ray")
DEFAULT_BACKEND = "local"
DEFAULT_RAY_ADDRESS = "auto"
PLAN_NODES = (1, 8, 32)  # node counts the plan projects to

__all__ = ["BACKENDS", "BackendError", "Node", "make", "parse_backend", "parse_ray_address"]


@dataclass(frozen=True)
class Node:
    """One machine that takes work: its name, CPU workers and GPUs."""

    name: str
    cpus: float
    gpus: float = 0.0


def parse_backend(text: str) -> str:
    """``local`` or ``ray`` (ValueError otherwise)."""
    name = str(text).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"choose one of {', '.join(BACKENDS)}")
    return name


def parse_ray_address(text: str) -> str:
    """``auto`` (the cluster started on this machine, or $RAY_ADDRESS), ``local`` (a private one-node Ray started
    here) or ``HOST:PORT`` of a cluster's head (ValueError otherwise)."""
    value = str(text).strip()
    if value.lower() in ("auto", "local"):
        return value.lower()
    if value.startswith("ray://"):
        raise ValueError("ray:// (Ray Client) is not supported: run the command on a node of the cluster and give "
                         "the head's HOST:PORT (the driver must reach the nodes' object stores)")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected auto, local or HOST:PORT (the head node's address, port 6379 by default)")
    return value


def node_counts(text: str) -> tuple[int, ...]:
    """Comma-separated whole numbers of at least 1 (``1,8,32``)."""
    try:
        counts = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ValueError("expected whole numbers separated by commas, e.g. 1,8,32") from None
    if not counts or min(counts) < 1:
        raise ValueError("expected whole numbers of at least 1, e.g. 1,8,32")
    return counts


def add_options(group) -> None:
    """The options that choose the backend (an argparse parser or group; defaults from $WHALEMATCH_<NAME>,
    :class:`ConfigError` naming a variable that holds a bad value)."""
    group.add_argument("--backend", default=env_value("BACKEND", parse_backend, DEFAULT_BACKEND), choices=BACKENDS,
                       help="where features are extracted and pairs verified: local (this machine) or ray (a Ray "
                            "cluster; needs pip install 'whalematch[ray]'); this process writes the caches either way "
                            "($WHALEMATCH_BACKEND)")
    group.add_argument("--ray-address", type=arg_type(parse_ray_address),
                       default=env_value("RAY_ADDRESS", parse_ray_address, DEFAULT_RAY_ADDRESS),
                       help="with --backend ray: auto (the cluster `ray start` runs on this machine, or $RAY_ADDRESS), "
                            "HOST:PORT of the cluster's head, or local (a private one-node Ray started here) "
                            "($WHALEMATCH_RAY_ADDRESS)")
    env_value("PLAN_NODES", node_counts, PLAN_NODES)  # a bad value: ConfigError naming the variable
    group.add_argument("--plan-nodes", type=arg_type(node_counts),
                       default=env("PLAN_NODES") or ",".join(map(str, PLAN_NODES)),
                       help="with --backend ray, the plan printed before the work projects the wall time on the "
                            "cluster connected and on these numbers of nodes like its nodes ($WHALEMATCH_PLAN_NODES)")


def make(name: str = DEFAULT_BACKEND, ray_address: str | None = None, workers: int = 1, device: str = "cpu"):
    """The backend ``name``: :class:`~matcher.backends.local.LocalBackend` or a connected
    :class:`~matcher.backends.ray_backend.RayBackend` (:class:`BackendError` when it cannot run)."""
    try:
        name = parse_backend(name)
        address = parse_ray_address(ray_address or DEFAULT_RAY_ADDRESS)
    except ValueError as exc:
        raise ConfigError(f"backend {name!r}, ray address {ray_address!r}: {exc}") from None
    if name == "local":
        from .local import LocalBackend

        return LocalBackend(workers, device)
    from .ray_backend import RayBackend  # imports ray: only when asked for

    return RayBackend(address, local_cpus=workers)
