"""restore from Python: what ``restore <task>`` does, with the same defaults, outputs and records.

    from restore_cli import restore

    result = restore("photos/", task="inpaint", method="resample", model="ffhq-ldm-vq-4", diffstategrad=True,
                     mask="box", output="restored")
    result.images[0]    # [C, H, W] float tensor in [0, 1]: the first image as restored (None where it failed)
    result.records[0]   # its metrics.json record: status, psnr, ssim, lpips, nfe, seconds, ...
    result.metrics      # the whole metrics.json: settings, seed, model revision, library versions, summary

It is the command itself, not a second implementation: the same checks (:func:`runs.plan.resolve`, a
:class:`~restore_cli.errors.UsageError` for what the command refuses with exit code 2), the same plan and the
same execution, writing the same files into ``output`` (a temporary folder, removed afterwards, when it is
None).  ``images`` are the restored PNGs read back, so they are exactly the pixels the command writes (8 or
16 bits, as the input was).  Tensors given as inputs (``[C, H, W]`` or ``[B, C, H, W]`` in [0, 1]) are
written as 16-bit PNGs first and restored like files.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch

from .errors import UsageError
from .images.read import read_image
from .images.write import write_png
from .runs.checks import RunConfig
from .runs.execute import execute
from .runs.plan import resolve

Images = Union[str, Path, torch.Tensor, Sequence[Union[str, Path, torch.Tensor]]]
# RunConfig's fields a caller may set (the rest are the task's options: mask, kernel, scale, quality, ...)
_RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"task", "inputs", "task_opts", "argv"}


@dataclass
class Restored:
    """What :func:`restore` returns: per input image (in the command's order), the restored image and its
    metrics.json record, the whole metrics.json, and the output folder (None when it was temporary)."""

    images: list[torch.Tensor | None]
    records: list[dict]
    metrics: dict
    output: Path | None


def restore(images: Images, task: str, *, method: str | None = None, model: str | None = None,
            diffstategrad: bool = False, output: str | Path | None = None,
            events: Callable[[str, dict], None] | None = None, **options: Any) -> Restored:
    """Restore ``images`` (files, folders or tensors) as ``restore <task>`` does.

    ``method=None`` and ``model=None`` pick the command's defaults.  ``options`` are the command's options
    by their Python names: run settings (``steps``, ``seed``, ``noise_sigma``, ``device``, ``dtype``,
    ``batch_size``, ``sets`` (a list of ``"KEY=VALUE"``), ``fit``, ``compare``, ``samples``, ``restarts``,
    ``rank_mode``, ``var_cutoff``, ``period``, ``prompt``, ``measured``, ``low_memory``, ``overwrite``, ...) and
    the task's options (``mask``, ``kernel``, ``kernel_size``, ``scale``, ``filter``, ``quality``, ...).
    ``events(kind, info)`` receives the run's progress ("model", "batch", "step", "image", "warning")."""
    run_opts = {k: v for k, v in options.items() if k in _RUN_FIELDS}
    task_opts = {k: v for k, v in options.items() if k not in _RUN_FIELDS}
    if isinstance(run_opts.get("sets"), str):
        run_opts["sets"] = [run_opts["sets"]]
    with tempfile.TemporaryDirectory(prefix="restore-") as tmp:
        inputs = _inputs(images, Path(tmp) / "inputs")
        out = Path(output) if output is not None else Path(tmp) / "restored"
        argv = ["restore_cli.restore", task]  # recorded as the run's command
        cfg = RunConfig(task=task, inputs=inputs, method=method, model=model, diffstategrad=diffstategrad,
                        output=out, task_opts=task_opts, argv=argv, **run_opts)
        plan = resolve(cfg)  # checks every name, option and path first, as the command does
        report = execute(plan, events)
        by_input = {r["input"]: r for r in report.data["images"]}
        records = [by_input.get(str(p), {}) for p in plan.images]
        restored = [read_image(out / f"{stem}.png") if rec.get("status") == "ok" else None
                    for stem, rec in zip(plan.stems, records)]
        return Restored(restored, records, report.data, Path(output) if output is not None else None)


def _inputs(images: Images, folder: Path) -> list[Path]:
    """Paths as given; each tensor image written as a 16-bit PNG into ``folder`` (``image-K.png``)."""
    items = images if isinstance(images, (list, tuple)) else [images]
    paths: list[Path] = []
    k = 0
    for item in items:
        if isinstance(item, torch.Tensor):
            batch = item if item.dim() == 4 else item[None]
            if batch.dim() != 4 or batch.shape[1] not in (1, 3):
                raise UsageError(f"an image tensor must be [C, H, W] or [B, C, H, W] with 1 or 3 channels, "
                                 f"got shape {tuple(item.shape)}")
            folder.mkdir(parents=True, exist_ok=True)
            for img in batch:
                path = folder / f"image-{k}.png"
                write_png(path, img.detach().float().clamp(0, 1).cpu(), bits=16)
                paths.append(path)
                k += 1
        else:
            paths.append(Path(item))
    return paths


__all__ = ["restore", "Restored"]
