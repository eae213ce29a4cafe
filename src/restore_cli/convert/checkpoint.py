"""Reading original checkpoints safely and writing converted diffusers folders atomically.

* :func:`load_state_dict` reads a ``.pt``/``.ckpt`` file with ``torch.load(weights_only=True)``:
  nothing but tensors and plain containers is built.  A PyTorch Lightning checkpoint (LDM's
  ``model.ckpt``) may also pickle Lightning objects (callbacks, loop states, enums); their names
  are replaced by inert stand-ins (:class:`_Inert`: it runs no code of theirs and keeps nothing),
  so such a file still loads, and only its tensors are used.
* :func:`convert_adm` and :func:`convert_ldm` turn a state dict into a diffusers folder
  (``unet/`` [+ ``vqvae/``] + ``scheduler/``, safetensors) with the schedule of the original
  config, written under a temporary name and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Mapping

from . import ConversionError, architecture

# The schedules of the original configs, as diffusers scheduler configs.
#   ADM (guided-diffusion, DPS): "linear", betas 1e-4 .. 0.02 over 1000 steps, learned-range variance.
#   LDM (ffhq-ldm-vq-4.yaml): LDM's "linear" is linspace(sqrt(0.0015), sqrt(0.0195))^2, which is
#   diffusers' "scaled_linear".
ADM_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
                 "beta_start": 0.0001, "beta_end": 0.02, "variance_type": "learned_range", "clip_sample": True,
                 "prediction_type": "epsilon"}
LDM_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                 "beta_start": 0.0015, "beta_end": 0.0195, "variance_type": "fixed_small", "clip_sample": False,
                 "prediction_type": "epsilon"}
ARCHITECTURES = {"adm": ["ffhq-256", "imagenet-256"], "ldm": ["ldm-ffhq-256"]}  # what each format converts to
SOURCE_RECORD = "restore-source.json"  # written last: a folder without it is incomplete


class _Inert:
    """Stands in for a class or function a checkpoint names but restore does not need: never runs its code."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _inert(qualified: str) -> type:
    module, _, name = qualified.rpartition(".")
    return type(name, (_Inert,), {"__module__": module, "__qualname__": name})


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_state_dict(path: Path) -> dict:
    """The tensors of a checkpoint (``ckpt["state_dict"]`` for Lightning files), read with ``weights_only=True``.

    The globals the file names beyond torch's allowlist are listed first without loading anything
    (``get_unsafe_globals_in_checkpoint``) and each gets an inert stand-in; torch still refuses the
    modules it blocks (``os``, ``subprocess``, ...), and such a file is refused in one line."""
    import torch

    path = Path(path)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        inert = [_inert(n) for n in names if "." in n and not n.startswith("builtins.")]  # builtins stay refused
        with torch.serialization.safe_globals(inert):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a refused or unreadable file: one line
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        if m is not None and ("is blocked" in str(e) or "not an allowed global" in str(e)):
            raise ConversionError(f"{path.name}: refused: the checkpoint asks to call {m.group(1)} (nothing was run); "
                                  f"if you trust it, torch.save its state_dict alone and convert that") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path.name}: not a readable PyTorch checkpoint ({first[:200]})") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, Mapping) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConversionError(f"{path.name}: no state dict of tensors in the checkpoint")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _ema_view(sd: Mapping, prefix: str) -> dict:
    """LDM keeps EMA weights as ``model_ema.<name without dots>``: the same keys as ``prefix`` with EMA values."""
    out = {}
    for k in sd:
        if k.startswith(prefix):
            ema = "model_ema." + k[len("model."):].replace(".", "")  # LitEma's buffer names
            if ema not in sd:
                raise ConversionError(f"--ema: the checkpoint has no EMA copy of {k}")
            out[k] = sd[ema]
    return out


def _write_model(folder: Path, config: dict, tensors: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "diffusion_pytorch_model.safetensors"))


def _finish(tmp: Path, dest: Path, record: dict) -> Path:
    (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=2))
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / SOURCE_RECORD).is_file():
            raise
    return dest


def _tmp_beside(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"


def convert_adm(sd: Mapping, arch: str, dest: Path, record: dict) -> Path:
    """A guided-diffusion (ADM) state dict -> ``dest/{unet,scheduler}`` (``arch``: ffhq-256, imagenet-256)."""
    from .unet import convert_openai_unet

    cfg = architecture(f"{arch}.unet")
    unet = convert_openai_unet(sd, cfg)
    tmp = _tmp_beside(dest)
    try:
        _write_model(tmp / "unet", cfg, unet)
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(ADM_SCHEDULER, indent=2))
        return _finish(tmp, dest, {**record, "format": "adm", "architecture": arch})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_ldm(sd: Mapping, arch: str, dest: Path, record: dict, ema: bool = False) -> Path:
    """A CompVis LDM Lightning state dict -> ``dest/{unet,vqvae,scheduler}`` (``arch``: ldm-ffhq-256, ...).

    The UNet is ``model.diffusion_model.*`` (what the LDM, ReSample and PSLD sampling scripts run) or,
    with ``ema``, its EMA copy ``model_ema.*``; the autoencoder is ``first_stage_model.*`` with the
    latent scaling factor 1.0 (LDM-VQ's ``scale_factor``).
    """
    from .unet import convert_openai_unet
    from .vq import convert_ldm_vq

    unet_cfg, vq_cfg = architecture(f"{arch}.unet"), architecture(f"{arch}.vqvae")
    prefix = "model.diffusion_model."
    unet_sd = _ema_view(sd, prefix) if ema else sd
    unet = convert_openai_unet(unet_sd, unet_cfg, prefix=prefix)
    vq = convert_ldm_vq(sd, vq_cfg, prefix="first_stage_model.")
    tmp = _tmp_beside(dest)
    try:
        _write_model(tmp / "unet", unet_cfg, unet)
        _write_model(tmp / "vqvae", {**vq_cfg, "scaling_factor": 1.0}, vq)
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(LDM_SCHEDULER, indent=2))
        return _finish(tmp, dest, {**record, "format": "ldm", "architecture": arch, "ema": ema})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_record(folder: Path) -> dict | None:
    p = Path(folder) / SOURCE_RECORD
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
