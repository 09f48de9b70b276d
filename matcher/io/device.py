"""Choose the torch device (CUDA when present, else CPU) and keep GPU memory under a cap.

``WHALEMATCH_DEVICE`` overrides the device. ``WHALEMATCH_GPU_MEMORY_GB`` (default 12, the
challenge's GPU) caps what this process may allocate on the GPU: :func:`apply_memory_cap`
tells torch's caching allocator to refuse more (so an oversized batch fails with an
out-of-memory error that the stages catch and split), and the stages size their batches
and matching chunks from :func:`memory_cap` so that they stay below it in the first place.
"""

from __future__ import annotations

import logging
import math
import os
import re

from ..errors import DeviceError

log = logging.getLogger(__name__)
DEFAULT_GPU_MEMORY_GB = 12.0
_applied: dict[int, int] = {}


def parse_name(text: str) -> str:
    """A device name as written: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (ValueError otherwise); whether the
    machine has it is :func:`pick`'s question."""
    name = str(text).strip().lower()
    if name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d{1,3}", name):
        return name
    raise ValueError("choose auto, cpu, cuda or cuda:N")


def parse_gpu_memory(text: str) -> float:
    """GiB of GPU memory this process may use: a positive number (ValueError otherwise)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("expected a positive number of GiB")
    return value


def pick(requested: str | None = None) -> str:
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``; a clear error for anything unusable."""
    import torch

    name = (requested or os.environ.get("WHALEMATCH_DEVICE") or "auto").strip().lower()
    try:
        parse_name(name)
    except ValueError:
        raise DeviceError(f"device {name!r} is not one of auto, cpu, cuda or cuda:N (--device / "
                          "WHALEMATCH_DEVICE)") from None
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but this machine has no usable CUDA GPU; "
                          "use --device auto or cpu (WHALEMATCH_DEVICE)")
    try:
        index = torch.device(name).index
    except RuntimeError:
        raise DeviceError(f"device {name!r} is not a valid CUDA device name (cuda or cuda:N)") from None
    if index is not None and index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA GPU(s) are present")
    return name


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def requested_cap_gb() -> float:
    """The GPU memory cap in GiB: ``$WHALEMATCH_GPU_MEMORY_GB``, else 12."""
    value = os.environ.get("WHALEMATCH_GPU_MEMORY_GB")
    try:
        return parse_gpu_memory(value) if value else DEFAULT_GPU_MEMORY_GB
    except ValueError as exc:
        raise ValueError(f"WHALEMATCH_GPU_MEMORY_GB={value!r}: {exc}") from None


def _index(device: str) -> int:
    import torch

    return torch.device(device).index if torch.device(device).index is not None else torch.cuda.current_device()


def memory_cap(device: str) -> int | None:
    """Bytes this process may allocate on ``device``: the cap or the card's size, whichever is smaller.

    ``None`` on the CPU (no cap: the operating system's memory is the limit).
    """
    if not is_cuda(device):
        return None
    import torch

    total = torch.cuda.get_device_properties(_index(device)).total_memory
    return int(min(total, requested_cap_gb() * 2**30))


def apply_memory_cap(device: str) -> int | None:
    """Make torch's allocator refuse to go past :func:`memory_cap` on ``device``; returns the cap (bytes)."""
    cap = memory_cap(device)
    if cap is None:
        return None
    import torch

    index = _index(device)
    if _applied.get(index) != cap:
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), index)
        _applied[index] = cap
        log.debug("GPU %d: allocations capped at %.1f GiB of %.1f", index, cap / 2**30, total / 2**30)
    return cap


def free_within_cap(device: str) -> int | None:
    """Bytes still available under the cap (what is allocated now counts against it); ``None`` on the CPU."""
    cap = memory_cap(device) if is_cuda(device) else None
    if cap is None:
        return None
    import torch

    return max(0, cap - torch.cuda.memory_allocated(_index(device)))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a GPU out-of-memory error (torch raises it as a RuntimeError subclass)."""
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def cpu_workers(requested: int | None = None) -> int:
    """CPU worker threads: the request, else the cores this process may use (at most 8)."""
    if requested:
        return max(1, int(requested))
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))
