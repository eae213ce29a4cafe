"""Many processes: ``accelerate launch`` (and ``torchrun``, and SLURM's ``srun`` + ``accelerate launch``).

A launcher starts one process per device and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`current` then joins the process group through accelerate's ``PartialState`` (NCCL on GPUs,
gloo on the CPU).  Work is shared deterministically (:meth:`Shard.share`: item ``k`` of a list goes
to rank ``k % world``), each process writes its own outputs atomically and merges its records into
the shared JSON file under a file lock (:func:`locked_update`) as it goes, so a killed process or
node loses nothing already written and a rerun with any number of processes finishes the rest.

Without a launcher, :func:`current` is the single process (rank 0 of 1) and costs nothing.

The locks live here too: :func:`output_lock`, one run per output folder (held by rank 0), and
:func:`file_lock`, short merges into a shared file; both on one OS primitive, :func:`lock`.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..errors import UsageError


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    state: Any = None  # accelerate's PartialState when world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        """This process's items: every ``world``-th from position ``rank``."""
        return items[self.rank::self.world]

    def place(self, device):
        """``cuda`` without an index becomes this process's GPU (local rank); other devices are kept."""
        if self.world > 1 and device.type == "cuda" and device.index is None:
            import torch

            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return device

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        box = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def record(self) -> dict | None:
        return None if self.world == 1 else {"world": self.world}


def launched() -> bool:
    """Started by a launcher with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current(cpu: bool = False) -> Shard:
    """This process's place in the launch (the process group is set up on the first call)."""
    if not launched():
        return Shard()
    from accelerate import PartialState

    state = PartialState(cpu=cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))
    return Shard(state.process_index, state.num_processes, state.local_process_index, state)


def lock(f, wait: bool = True) -> None:
    """An exclusive OS lock on the open file ``f`` (released when it is closed or the process dies);
    ``wait=False`` raises OSError at once if another process holds it."""
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        msvcrt.locking(f.fileno(), msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))


@contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` (created if needed), waiting for it: for short read-modify-writes."""
    f = open(path, "a+")
    try:
        lock(f)
        yield
    finally:
        f.close()


@contextmanager
def output_lock(folder: Path):
    """Hold ``folder/.restore.lock`` for the run: a second run into the same folder is refused at once
    (UsageError) instead of mixing its files and records with this one's.  The OS drops the lock when
    the process dies, so a killed run never leaves the folder locked; a finished run removes the file."""
    path = folder / ".restore.lock"
    while True:
        f = open(path, "a+")
        try:
            lock(f, wait=False)
        except OSError:
            f.seek(0)
            who = f.read().strip() or "?"
            f.close()
            raise UsageError(f"another restore run ({who}) is writing to {folder}; wait for it to finish "
                             "or choose another -o") from None
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break  # we hold the lock on the file that is there now
        except FileNotFoundError:
            pass
        f.close()  # the file was removed by the run we waited on: lock the new one
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, started {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
        f.flush()
        yield
    finally:
        try:
            os.unlink(path)  # while still locked, so that no other run can hold this inode
        except OSError:
            pass
        f.close()


def locked_update(path: Path, update: Callable[[dict | None], dict]) -> dict:
    """Read the JSON at ``path`` (None if absent or unreadable), apply ``update`` and write the result
    atomically, all under ``path``'s side lock, so that processes merging into one file lose nothing."""
    from ..images.write import write_json_atomic

    path = Path(path)
    with file_lock(path.with_name(f".{path.name}.lock")):
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        new = update(old)
        write_json_atomic(path, new)
    return new
