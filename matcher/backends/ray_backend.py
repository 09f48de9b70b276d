"""The Ray backend: feature extraction and pair verification as Ray tasks on a cluster (the driver's side;
the tasks themselves are in :mod:`matcher.backends.ray_tasks`).

**Connecting.** ``--ray-address auto`` is the cluster that ``ray start`` left on this machine
(or ``$RAY_ADDRESS``), ``HOST:PORT`` a cluster's head, ``local`` a private one-node Ray started
here. The address is resolved and its port tried first (a few seconds at most), so an
unreachable cluster is an error, not a hang. Then every node with CPUs runs a probe task that
reports the versions of what verdicts depend on (OpenCV, torch, kornia, whalematch): a node
that differs from this process is refused, since its features and verdicts would be stored
under this process's cache keys. A cluster without CPUs, or where no probe finds a free CPU
within :data:`WAIT_FOR_CPUS_S`, is an error too.

**Features.** The images, in the feature stage's order (equal working sizes side by side),
are cut into chunks of a few batches; each chunk is one task, given the files' bytes (read
here: the nodes need no shared filesystem), which runs :class:`~matcher.features.stage.FeatureStage`
(the same extractor code and batching, with a store that keeps nothing) on a GPU when the
cluster has one (a task per GPU), else on one CPU, and returns the features. The driver writes
the cache entries, exactly as the local path does (:meth:`FeatureStage._extract`).

**Pairs.** The canonical pairs the store lacks, in canonical order (so grouped by their first
image), are cut into blocks of consecutive pairs; each block is one task that receives each of
its images' features once (put into Ray's object store once per run, so fetched once per node)
and runs :meth:`~matcher.pairs.verifier.PairVerifier.match_and_verify` on the block's items,
the very code of the local path (seeded RANSAC: the verdicts are bit-identical). Blocks are
scheduled ``SPREAD`` over the nodes, at most a few per CPU in flight, and their verdicts come
back to the driver, which stays the one writer of the verdict store.

**Faults.** A task lost with its worker or its node (the process killed, the node removed or
out of memory) is submitted again by the driver, up to :data:`MAX_TRIES` times, with a warning
naming the block, the error and the node that left; the verdicts that came back before are
kept (the verifier flushes them as they arrive). An exception raised by the task's own code is
not retried (it would fail again): it stops the run with the node's message. When nothing
comes back for :data:`STALL_S` seconds and the cluster has no CPU left, the run stops with an
error (what was done is kept; a rerun resumes from the caches).
"""

from __future__ import annotations

import logging
import math
import re
import socket
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__, cache
from ..errors import BackendError, ImageError
from ..io import images
from . import Node
from .ray_tasks import extract_chunk, extract_mirrored_chunk, probe, verify_block

log = logging.getLogger(__name__)

NAMESPACE = "whalematch"
INSTALL_HINT = "pip install 'whalematch[ray]'"
CONNECT_TIMEOUT_S = 5.0  # trying the head's port
WAIT_FOR_CPUS_S = 60.0  # for the probes to find a free CPU
STALL_S = 30.0  # without any result: is there still a CPU in the cluster?
MAX_TRIES = 4  # submissions of one task lost with its worker or node
MIN_BLOCK, MAX_BLOCK = 8, 512  # pairs per verification task
BLOCKS_PER_SLOT = 4  # at least this many blocks per CPU worker when there are enough pairs (even spread)
IN_FLIGHT_PER_SLOT = 3  # tasks submitted and not yet taken in, per worker
CHUNK_CPU, CHUNK_GPU = 16, 64  # images per extraction task


def import_ray():
    """The ``ray`` module, or :class:`BackendError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise BackendError(f"--backend ray needs the ray package, which is not installed here ({exc}): install it "
                           f"with {INSTALL_HINT} (on every node of the cluster too), or use --backend local") from None
    return ray


# --------------------------------------------------------------------------- the driver's side


def resolve_address(address: str) -> str:
    """``HOST:PORT`` of the cluster to join (``auto`` looked up as Ray does), or :class:`BackendError`."""
    if address != "auto":
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError, ImportError, AttributeError) as exc:
        raise BackendError("--ray-address auto: no running Ray cluster found on this machine (nor in $RAY_ADDRESS): "
                           "start one with `ray start --head` (and `ray start --address HEAD:6379` on each other "
                           f"node), or give --ray-address HOST:PORT ({exc})") from None
    if not found:
        raise BackendError("--ray-address auto: no running Ray cluster found on this machine (nor in $RAY_ADDRESS)")
    return found


def check_reachable(target: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Connect to the head's port once, so an unreachable cluster is an error within ``timeout`` seconds."""
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        why = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
        raise BackendError(f"cannot reach the Ray cluster at {target} ({why}): is `ray start --head` running there, "
                           "and is its port open from this machine? (--ray-address, $WHALEMATCH_RAY_ADDRESS)") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@dataclass
class Job:
    """One task's work, kept until its result is in (to submit it again if it is lost)."""

    name: str
    payload: object
    size: int  # pairs or images
    tries: int = 0
    extra: dict = field(default_factory=dict)


class RayBackend:
    """A connected Ray cluster that runs the feature stage's and the pair verifier's work (see the module
    docstring). ``block_pairs`` fixes the pairs per verification task (None: sized from the work)."""

    name = "ray"

    def __init__(self, address: str = "auto", wait_s: float | None = None, block_pairs: int | None = None,
                 local_cpus: int | None = None):
        self.ray = import_ray()
        self.address = address
        self.local_cpus = local_cpus  # CPUs of the one-node Ray started here with address "local" (None: all)
        self.wait_s = WAIT_FOR_CPUS_S if wait_s is None else wait_s
        self.block_pairs = block_pairs
        self.started = False  # this process started the Ray instance (address local)
        self.remote = self  # the runner the feature stage and the pair verifier call
        # called per task taken in, with ("pairs" or "images", how many, the node's id)
        self.listeners: list[Callable[[str, int, str], None]] = []
        self.retried = 0
        self.lost: list[str] = []  # what was lost and submitted again (also logged)
        self._refs: dict[str, object] = {}  # content hash -> features in the object store
        self._names: dict[str, str] = {}  # node id -> a short name
        self._work: dict[str, dict] = {}  # node id -> pairs, images, tasks, seconds
        self._fns: dict[str, object] = {}
        self._connect()
        self._nodes: dict[str, Node] = self._probe_nodes()  # node id -> the node, those that take work

    # -- connecting

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            current = ray.get_runtime_context().gcs_address
            if self.address not in ("auto", "local", current):
                raise BackendError(f"this process is already connected to the Ray cluster at {current}, "
                                   f"not {self.address}")
            self.where = current
            return
        options = dict(namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
        if self.address == "local":
            ray.init(num_cpus=self.local_cpus, include_dashboard=False, **options)
            self.started = True
            self.where = "a one-node Ray started here"
            return
        target = resolve_address(self.address)
        check_reachable(target)
        try:
            ray.init(address=target, **options)
        except Exception as exc:  # noqa: BLE001 - whatever Ray says, the user gets the address and the reason
            raise BackendError(f"cannot join the Ray cluster at {target}: {first_line(exc)}") from None
        self.where = target

    def _node_name(self, node_id: str) -> str:
        if node_id not in self._names:
            info = next((n for n in self.ray.nodes() if n["NodeID"] == node_id), None)
            ip = info["NodeManagerAddress"] if info else "?"
            self._names[node_id] = f"node {ip}/{node_id[:6]}"
        return self._names[node_id]

    def _alive(self) -> list[dict]:
        nodes = (n for n in self.ray.nodes() if n.get("Alive"))
        return sorted(nodes, key=lambda n: (n["NodeManagerAddress"], n["NodeID"]))

    def _probe_nodes(self) -> dict[str, Node]:
        """The nodes with CPUs (by node id), each probed once (versions compared); :class:`BackendError` when
        none can work."""
        alive = self._alive()
        for n in alive:
            self._node_name(n["NodeID"])
        workers = [n for n in alive if n["Resources"].get("CPU", 0) >= 1]
        if not workers:
            raise BackendError(f"the Ray cluster at {self.where} has no CPU to work on ({len(alive)} node(s), "
                               f"{sum(n['Resources'].get('CPU', 0) for n in alive):g} CPUs): add worker nodes "
                               "(`ray start --address HEAD:PORT --num-cpus N`)")
        nodes = self._probe(workers, self.wait_s)
        if not nodes:
            free = self.ray.available_resources().get("CPU", 0)
            raise BackendError(f"no CPU of the Ray cluster at {self.where} became free within {self.wait_s:g} s "
                               f"({sum(n['Resources']['CPU'] for n in workers):g} CPUs in all, {free:g} free now): "
                               "other jobs hold them; wait for them to finish, or add nodes")
        log.info("Ray cluster at %s: %s", self.where, "; ".join(f"{n.name}: {n.cpus:g} CPUs, {n.gpus:g} GPUs"
                                                                 for n in nodes.values()))
        return nodes

    def _probe(self, workers: list[dict], wait_s: float) -> dict[str, Node]:
        """Run the probe on each of these nodes; those that answered within ``wait_s`` (versions checked)."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        fn = self._fn(probe)
        refs = {fn.options(num_cpus=1, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(): n for n in workers}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=wait_s)
        for ref in pending:
            ray.cancel(ref)
            log.warning("%s has no free CPU now (other jobs): not checked, it takes no work from this run until it "
                        "answers", self._node_name(refs[ref]["NodeID"]))
        mine = {"software": cache.software(), "whalematch": __version__}
        nodes = {}
        for ref in ready:
            n = refs[ref]
            name = self._node_name(n["NodeID"])
            try:
                theirs = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a node that cannot run the code at all
                raise BackendError(f"{name} of the Ray cluster cannot run whalematch ({first_line(exc)}): install the "
                                   f"same version on every node ({INSTALL_HINT})") from None
            differ = {k: (mine[k], theirs.get(k)) for k in mine if theirs.get(k) != mine[k]}
            if differ:
                raise BackendError(f"{name} runs other software than this process ({differ}: this process's, then the "
                                   "node's): its features and verdicts would differ; install the same versions on "
                                   "every node")
            res = n["Resources"]
            nodes[n["NodeID"]] = Node(name, float(res.get("CPU", 0)), float(res.get("GPU", 0)))
        return nodes

    def refresh(self) -> None:
        """Take in the nodes that joined since (probed like the first ones) and drop those that left."""
        alive = self._alive()
        ids = {n["NodeID"] for n in alive}
        for gone in [i for i in self._nodes if i not in ids]:
            del self._nodes[gone]
        new = [n for n in alive if n["NodeID"] not in self._nodes and n["Resources"].get("CPU", 0) >= 1]
        if new:
            joined = self._probe(new, min(self.wait_s, CONNECT_TIMEOUT_S))
            for _i, node in joined.items():
                log.info("%s joined the Ray cluster: %g CPUs, %g GPUs", node.name, node.cpus, node.gpus)
            self._nodes.update(joined)

    def _fn(self, fn: Callable):
        if fn.__name__ not in self._fns:
            self._fns[fn.__name__] = self.ray.remote(fn)
        return self._fns[fn.__name__]

    # -- what the planner and the progress bars read

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    @property
    def cpus(self) -> int:
        return max(1, int(sum(n.cpus for n in self._nodes.values())))

    @property
    def gpus(self) -> int:
        return int(sum(n.gpus for n in self._nodes.values()))

    @property
    def slots(self) -> int:
        """Pair-verification workers: one per CPU."""
        return self.cpus

    @property
    def label(self) -> str:
        n = len(self._nodes)
        return (f"ray: {n} node{'s' * (n != 1)}, {self.cpus} CPUs" + (f", {self.gpus} GPUs" if self.gpus else ""))

    def work(self) -> dict[str, dict]:
        """Per node name: pairs verified and images extracted, tasks, the tasks' own seconds for each kind and the
        CPU seconds of the verification tasks (all runs of this process so far)."""
        return {self._node_name(k): dict(v) for k, v in self._work.items()}

    def _account(self, node_id: str, what: str, count: int, seconds: float, cpu_s: float = 0.0) -> None:
        w = self._work.setdefault(node_id, {"pairs": 0, "images": 0, "tasks": 0, "pair_s": 0.0, "image_s": 0.0,
                                            "pair_cpu_s": 0.0})
        w[what] += count
        w["tasks"] += 1
        w["pair_s" if what == "pairs" else "image_s"] += seconds
        if what == "pairs":
            w["pair_cpu_s"] += cpu_s
        for listener in list(self.listeners):
            listener(what, count, node_id)

    # -- the runner the feature stage and the pair verifier call

    def block_size(self, pairs: int) -> int:
        if self.block_pairs:
            return max(1, int(self.block_pairs))
        return max(MIN_BLOCK, min(MAX_BLOCK, math.ceil(pairs / (self.slots * BLOCKS_PER_SLOT))))

    def verify(self, conf: dict, todo: list[tuple[str, str]], features: dict) -> Iterator[dict]:
        """Verdicts of the canonical pairs ``todo`` (in canonical order), block by block as they come back."""
        ray = self.ray
        self.refresh()
        for sha in sorted({s for pair in todo for s in pair}):
            if sha not in self._refs:
                self._refs[sha] = ray.put(features[sha])
        size = self.block_size(len(todo))
        jobs = []
        for i in range(0, len(todo), size):
            block = todo[i : i + size]
            items: dict[str, list[str]] = {}
            for a, b in block:
                items.setdefault(a, []).append(b)
            jobs.append(Job(f"pair block {i // size + 1} of {math.ceil(len(todo) / size)} ({len(block)} pairs from "
                            f"{block[0][0][:8]}..)", list(items.items()), len(block)))
        fn = self._fn(verify_block)

        def submit(job: Job):
            shas = sorted({s for a, bs in job.payload for s in (a, *bs)})
            return fn.options(num_cpus=1, max_retries=0, scheduling_strategy="SPREAD").remote(
                conf, job.payload, shas, *(self._refs[s] for s in shas))

        for _, (verdicts, node, seconds, cpu_s) in self._run(jobs, submit, self.slots * IN_FLIGHT_PER_SLOT):
            self._account(node, "pairs", len(verdicts), seconds, cpu_s)
            yield verdicts

    def _extract_jobs(self, items: list[tuple[str, Path]], what: str) -> list[Job]:
        slots = self.gpus or self.cpus
        chunk = max(1, min(CHUNK_GPU if self.gpus else CHUNK_CPU, math.ceil(len(items) / (2 * slots))))
        return [Job(f"{what} chunk {i // chunk + 1} of {math.ceil(len(items) / chunk)} ({len(items[i:i + chunk])} "
                    "images)", items[i : i + chunk], len(items[i : i + chunk])) for i in range(0, len(items), chunk)]

    def _blobs(self, job: Job) -> list[tuple[str, images.Blob]]:
        """The chunk's files read here (an unreadable one is recorded in the job, as the local path reports it)."""
        blobs, job.extra["bad"] = [], {}
        for key, path in job.payload:
            try:
                blobs.append((key, images.Blob(str(path), images.read_bytes(path))))
            except ImageError as exc:
                job.extra["bad"][key] = str(exc)
        return blobs

    def extract(self, conf: dict, items: list[tuple[str, Path]]) -> Iterator[tuple[dict, dict, int]]:
        """Features of the images ``(sha, path)`` (in the feature stage's order), chunk by chunk as they come back:
        (features, errors, images done)."""
        return self._extract(extract_chunk, conf, items, "feature")

    def extract_mirrored(self, conf: dict, todo: list[tuple[str, Path]]) -> Iterator[tuple[dict, dict, int]]:
        """Features of the mirrored images ``(key, path)``, chunk by chunk: (features, errors, images done)."""
        return self._extract(extract_mirrored_chunk, conf, todo, "mirrored feature")

    def _extract(self, task: Callable, conf: dict, items: list[tuple[str, Path]], what: str
                 ) -> Iterator[tuple[dict, dict, int]]:
        self.refresh()
        fn, device = self._fn(task), "cuda" if self.gpus else "cpu"
        options = dict(num_cpus=1, num_gpus=1 if self.gpus else 0, max_retries=0)

        def submit(job: Job):
            return fn.options(**options).remote(conf, device, self._blobs(job))

        for job, (feats, errors, node, seconds) in self._run(self._extract_jobs(items, what), submit,
                                                             2 * (self.gpus or self.cpus)):
            self._account(node, "images", len(feats), seconds)
            yield feats, {**job.extra.get("bad", {}), **errors}, job.size

    # -- submitting, taking in, submitting again what was lost

    def _run(self, jobs: list[Job], submit: Callable, window: int) -> Iterator[tuple[Job, tuple]]:
        ray = self.ray
        from ray.exceptions import RayError, RayTaskError

        queue = deque(jobs)
        in_flight: dict = {}

        def fill() -> None:
            while queue and len(in_flight) < max(1, window):
                job = queue.popleft()
                in_flight[submit(job)] = job

        try:
            fill()
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=STALL_S)
                if not ready:
                    self._check_cpus(len(in_flight) + len(queue))
                    continue
                job = in_flight.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except RayTaskError as exc:  # the task's own code failed: it would fail again
                    raise BackendError(f"{job.name} failed on the Ray cluster: {first_line(exc)}") from exc
                except RayError as exc:  # lost with its worker or node: submit it again
                    self._lost(job, exc)
                    queue.appendleft(job)
                    fill()
                    continue
                yield job, result
                fill()
        finally:
            for ref in in_flight:  # stopped early (an error, or the caller gave up): nothing left running
                ray.cancel(ref)

    def _lost(self, job: Job, exc: Exception) -> None:
        job.tries += 1
        self.retried += 1
        why = self._why_lost(exc)
        if job.tries >= MAX_TRIES:
            raise BackendError(f"{job.name} was lost {job.tries} times ({type(exc).__name__}: {first_line(exc)}; "
                               f"{why}); giving up (what was done is kept: a rerun resumes from the caches)")
        message = (f"{job.name} was lost ({why}; {type(exc).__name__}: {first_line(exc)}); submitted again "
                   f"(try {job.tries + 1} of {MAX_TRIES})")
        self.lost.append(message)
        log.warning("%s", message)

    def _why_lost(self, exc: Exception) -> str:
        """Which node left (the one the error names, and any other the cluster reports dead), or what died."""
        from ray.exceptions import NodeDiedError, WorkerCrashedError

        named = re.search(r"node ID: ([0-9a-f]{16,})", str(exc))
        gone = []
        if named and isinstance(exc, NodeDiedError) and named.group(1) in self._nodes:
            gone.append(self._nodes.pop(named.group(1)).name)
        gone += self._departed()
        if gone:
            return f"{', '.join(gone)} left the cluster"
        if named and isinstance(exc, NodeDiedError):
            return f"{self._node_name(named.group(1))} had left the cluster"
        if isinstance(exc, WorkerCrashedError):
            return "its worker process died"
        return "lost with its worker or node"

    def _departed(self) -> list[str]:
        """Names of the nodes that were working and are gone now (each said once)."""
        alive = {n["NodeID"] for n in self._alive()}
        gone = [i for i in self._nodes if i not in alive]
        return [self._nodes.pop(i).name for i in gone]

    def _check_cpus(self, unfinished: int) -> None:
        cpus = self.ray.cluster_resources().get("CPU", 0)
        if cpus < 1:
            raise BackendError(f"no CPU left in the Ray cluster at {self.where} ({unfinished} tasks unfinished): what "
                               "was done is kept; rerun when nodes are back, or with --backend local")
        log.info("waiting for the Ray cluster: %d tasks unfinished, %g of %g CPUs free", unfinished,
                 self.ray.available_resources().get("CPU", 0), cpus)

    def close(self) -> None:
        """Let go of the features put in the object store (and stop Ray if this process started it)."""
        self._refs.clear()
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
            self.started = False
