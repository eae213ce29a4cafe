"""Peak memory of a block of work: CUDA's allocator peak on a GPU, the process's peak RSS on the CPU.

On Linux the RSS high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs``
before the block, so the reading belongs to the block (it includes everything the process
holds, such as the model's weights).  Elsewhere the CPU reading is ``None``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import torch


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Usage:
    seconds: float = 0.0
    peak_mb: float | None = None


@contextmanager
def measure(device: torch.device):
    """``with measure(dev) as u: ...`` then ``u.seconds`` and ``u.peak_mb``."""
    u = Usage()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
    t0 = time.perf_counter()
    try:
        yield u
    finally:
        if cuda:
            torch.cuda.synchronize(device)
            u.peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            u.peak_mb = _vm_hwm_mb()
        u.seconds = time.perf_counter() - t0
