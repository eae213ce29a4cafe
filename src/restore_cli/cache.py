"""restore's own cache folder (converted checkpoints, LPIPS backbones, FID networks)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """restore's own cache (converted checkpoints, LPIPS backbones): ``$RESTORE_CACHE`` or ``~/.cache/restore``."""
    return Path(os.environ.get("RESTORE_CACHE", Path.home() / ".cache" / "restore"))
