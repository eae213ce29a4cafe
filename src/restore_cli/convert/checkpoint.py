"""Reading original checkpoints safely and writing converted diffusers folders atomically.

* :func:`read_state_dict` reads a ``.pt``/``.ckpt`` file (``torch.save``'s zip format or the older
  non-zip one) with ``torch.load`` and a restricted unpickler (:class:`_Unpickler`) that imports
  nothing and calls only what ``torch.load(weights_only=True)`` allows (torch's tensor rebuilders,
  dtypes, sizes, ``OrderedDict``, ``set``). Every other class or function the file names (Lightning's
  ``AttributeDict``, callbacks and their class keys, enums, OmegaConf configs, numpy scalars,
  optimizer and scheduler helpers) becomes an inert stand-in (:class:`_Inert`) that keeps at most
  the dictionary items the file puts in it. A file that names a function of ``builtins``
  (``eval``, ``getattr``, ...) or anything from a module that runs code or commands
  (:data:`_HOSTILE_MODULES`: ``os``, ``sys``, ``subprocess``, ...) is refused in one line, as
  hostile (nothing of it would have run either), as is a TorchScript archive (``torch.load`` would
  run its code), an attempt to set the attributes of anything but a tensor, a parameter, an ordered
  dict or a stand-in, and a persistent reference ``torch.save`` never writes. :func:`load_state_dict`
  keeps only the tensors.
* :func:`convert_adm` and :func:`convert_ldm` turn a state dict into a diffusers folder
  (``unet/`` [+ ``vqvae/``] + ``scheduler/``, safetensors) with the schedule of the original
  config, written under a temporary name and renamed into place only when complete.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import hashlib
import json
import os
import pickle
import shutil
import types
import uuid
from pathlib import Path
from typing import Mapping

from . import ConversionError, architecture, weight_problem

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


# Modules whose names a model checkpoint has no reason to carry: they run code or commands. A file that
# names one of them (or a function of ``builtins``) is refused as hostile; nothing would have been run anyway.
_HOSTILE_MODULES = frozenset({
    "os", "posix", "nt", "sys", "subprocess", "_posixsubprocess", "pty", "shutil", "socket", "ctypes",
    "importlib", "runpy", "code", "codeop", "pickle", "_pickle", "marshal", "multiprocessing", "webbrowser",
})


class _Refused(Exception):
    """A checkpoint asks for something a weights file never needs (``what``: said as a user would read it)."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class _Inert(dict):
    """Stands in for a class or function a checkpoint names: nothing of theirs is imported or run.

    Being a dict, it keeps the items a pickled dict subclass (Lightning's ``AttributeDict``) puts in
    it; every other call the unpickler makes on it (construction, ``__setstate__``, ``append``,
    ``extend``, ``add``) is accepted and ignored. Hashed by identity, so it can be a dict key."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def add(self, item):
        pass


def _allowed_globals() -> dict:
    """What ``torch.load(weights_only=True)`` lets a file call: torch's tensor rebuilders and plain types.

    Less ``_codecs.encode`` (protocol 2's bytes), which may import a codec: bytes become stand-ins."""
    from torch import _weights_only_unpickler

    allowed = _weights_only_unpickler._get_allowed_globals()
    return {k: v for k, v in allowed.items() if k != "_codecs.encode"}


class _Unpickler(pickle._Unpickler):
    """An unpickler that imports nothing: torch's allowed globals, inert stand-ins, or :class:`_Refused`.

    The pure-Python one (``data.pkl`` is small; the tensors' bytes are not pickled), so that two of its steps
    can be checked as torch's weights-only unpickler checks them:

    * BUILD (``__setstate__`` or attribute setting) only on tensors, parameters, ordered dicts and stand-ins:
      on an allowed class or function it would change torch or the standard library for the whole process,
      and in the non-zip format lead torch to write a ``.patch`` file named by the checkpoint;
    * persistent ids only as ``torch.save`` writes them (``("storage", ...)``), not the source-checking
      ``"module"`` ids of the non-zip format nor those of the older tar format."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._standins: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names, as pickle itself maps them
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        allowed = _allowed_globals()
        if full in allowed:
            return allowed[full]
        if module == "builtins" and not isinstance(getattr(builtins, name, None), type):
            raise _Refused(f"asks to call {name}")  # eval, exec, getattr, __import__, open, ...
        if module.partition(".")[0] in _HOSTILE_MODULES:
            raise _Refused(f"asks to call {full}")
        if full not in self._standins:
            self._standins[full] = type(name, (_Inert,), {"__module__": module, "__qualname__": name})
        return self._standins[full]

    def _load_build(self):
        import collections

        import torch

        target = self.stack[-2]
        if not (type(target) in (torch.Tensor, torch.nn.Parameter, collections.OrderedDict) or isinstance(target, _Inert)):
            name = getattr(target, "__qualname__", type(target).__qualname__)
            raise _Refused(f"asks to change the attributes of {name}")
        pickle._Unpickler.load_build(self)

    def _load_binpersid(self):
        pid = self.stack[-1]
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
            raise _Refused("holds a reference torch.save never writes (an old or forged format)")
        pickle._Unpickler.load_binpersid(self)

    def _load_persid(self):
        raise _Refused("holds a reference torch.save never writes (an old or forged format)")

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.BINPERSID[0]] = _load_binpersid
    dispatch[pickle.PERSID[0]] = _load_persid


def _unpickle(file, **kwargs):
    return _Unpickler(file, **kwargs).load()


#: what ``torch.load(pickle_module=...)`` uses: ``Unpickler`` for the main pickle, ``load`` for the small
#: ones of the non-zip format (magic number, protocol, storage keys)
_SAFE_PICKLE = types.SimpleNamespace(__name__=__name__, Unpickler=_Unpickler, load=_unpickle)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: Path) -> dict:
    """The state dict of a checkpoint (``ckpt["state_dict"]`` for Lightning files), every entry as read.

    Read with :class:`_Unpickler` (see the module docstring), in either of ``torch.save``'s formats.
    A file that names a code runner, or that cannot be read, or holds no tensors, is refused in one line."""
    import torch

    path = Path(path)
    try:
        with open(path, "rb") as f:
            # torch.load hands a TorchScript archive (a zip holding constants.pkl) to torch.jit.load, which runs
            # its code: ask torch's own test, on this open file, so that the test and the load read the same bytes
            if torch.serialization._is_zipfile(f):
                with torch.serialization._open_zipfile_reader(f) as z:
                    if torch.serialization._is_torchscript_zip(z):
                        raise _Refused("holds TorchScript code (a torch.jit archive)")
            f.seek(0)
            ckpt = torch.load(f, map_location="cpu", pickle_module=_SAFE_PICKLE, weights_only=False)
    except _Refused as e:
        raise ConversionError(f"{path.name}: refused: the checkpoint {e.what} (nothing was run); "
                              f"if you trust it, torch.save its state_dict alone and convert that") from None
    except Exception as e:  # noqa: BLE001 - an unreadable file: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path.name}: not a readable PyTorch checkpoint ({first[:200]})") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, Mapping) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConversionError(f"{path.name}: no state dict of tensors in the checkpoint")
    return dict(sd)


def load_state_dict(path: Path) -> dict:
    """The tensors of :func:`read_state_dict` (other entries dropped)."""
    import torch

    return {k: v for k, v in read_state_dict(path).items() if isinstance(v, torch.Tensor)}


def _ema_view(sd: Mapping, prefix: str) -> dict:
    """LDM keeps EMA weights as ``model_ema.<name without dots>``: the same keys as ``prefix`` with EMA values."""
    out = {}
    for k in sd:
        if k.startswith(prefix):
            ema = "model_ema." + k[len("model."):].replace(".", "")  # LitEma's buffer names
            if ema not in sd:
                raise ConversionError(f"--ema: the checkpoint has no EMA copy of {k}")
            if problem := weight_problem(ema, sd[ema]):
                raise ConversionError(f"--ema: {problem}")
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
