"""Checkpoint files as real releases hold them: both torch.save formats, everything Lightning pickles
besides tensors, hostile files, wrong entries where weights belong, and head counts the weights do not show.

Lightning, OmegaConf and CompVis's training helpers are not installed: the classes a Lightning
checkpoint names are defined here under their real module names, made importable only while the
file is written (:func:`importable`), so reading it must cope with names it cannot import, and must
not call anything (a function the file names would leave a marker if it ran).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import re
import subprocess
import sys
import types
import typing
import warnings
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from tests.models.test_convert_unet import T_FLOAT, _adm_cls, _adm_config, _assert_close, _build, _compare
from tests.models.test_models_download import (  # noqa: F401 - tiny is a fixture
    TINY_LDM_UNET, adm_state_dict, ldm_lightning_state_dict, one_line_error, runner, tiny,
)

from restore_cli.cli.app import app
from restore_cli.convert import ConversionError
from restore_cli.convert.checkpoint import load_state_dict, read_state_dict
from restore_cli.convert.unet import convert_openai_unet

UNET = "model.diffusion_model."
CALLED: list[str] = []  # what the pickled functions below would record if anything called them


# --------------------------------------------------------------------------- what Lightning pickles


def _from(module: str, name: str | None = None):
    """Give a stand-in the module (and name) of what it stands for."""
    def put(obj):
        obj.__module__ = module
        if name:
            obj.__name__ = obj.__qualname__ = name
        return obj

    return put


@_from("pytorch_lightning.utilities.parsing")
class AttributeDict(dict):  # Lightning 1.x hyper_parameters (lightning.fabric.utilities.data in 2.x)
    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e


@_from("lightning.fabric.utilities.data", "AttributeDict")
class AttributeDict2(AttributeDict):
    pass


@_from("pytorch_lightning.callbacks.model_checkpoint")
class ModelCheckpoint:  # Lightning 1.4 keys callback states by the callback's class
    pass


@_from("lightning.pytorch.utilities.enums")
class TrainerFn(str, enum.Enum):
    FITTING = "fit"


@_from("omegaconf.base")
@dataclasses.dataclass
class ContainerMetadata:  # what an OmegaConf DictConfig pickles: builtins.dict and typing.Any among its fields
    ref_type: typing.Any = typing.Any
    object_type: typing.Any = dict
    optional: bool = True
    key: typing.Any = None
    flags: dict = dataclasses.field(default_factory=dict)


@_from("omegaconf.dictconfig")
class DictConfig:
    def __init__(self, content: dict):
        self.__dict__.update(_metadata=ContainerMetadata(), _content=content, _parent=None, _flags_cache=None)

    def __setstate__(self, state):
        CALLED.append("DictConfig.__setstate__")


class LambdaWarmUpCosineScheduler:  # LDM's LR schedule object; LambdaLR stores its __dict__
    def __init__(self):
        self.lr_min, self.lr_max, self.warm_up_steps, self.last_lr = 0.0, 1.0, 100, 0.0

    def __call__(self, n):
        return 1.0


@_from("lightning.pytorch.cli")
def instantiate_class(*args):
    CALLED.append("instantiate_class")


STAND_INS = [AttributeDict, AttributeDict2, ModelCheckpoint, TrainerFn, ContainerMetadata, DictConfig, instantiate_class]


@contextmanager
def importable(*objs):
    """Each object importable under its module name while the file is written (as with Lightning installed)."""
    added = []
    for obj in objs:
        parts = obj.__module__.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        setattr(sys.modules[obj.__module__], obj.__qualname__, obj)
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


def lightning_checkpoint(sd: dict) -> dict:
    """A checkpoint with every kind of object Lightning 1.x/2.x and LDM's training write besides the weights."""
    state_dict = OrderedDict(sd)
    state_dict._metadata = OrderedDict({"": {"version": 1}})  # what nn.Module.state_dict() carries
    state_dict["model_ema.decay"] = torch.tensor(0.9999)
    state_dict["model_ema.num_updates"] = torch.tensor(1234, dtype=torch.int32)
    params = [torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.zeros(4))]
    opt = torch.optim.AdamW(params, lr=1e-4)
    params[0].sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=[LambdaWarmUpCosineScheduler()])
    plain = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lambda n: 1.0)  # stored as None
    hparams = AttributeDict(
        unet_config=DictConfig({"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                                "params": {"image_size": 64, "num_head_channels": 32}}),
        timesteps=1000, monitor="val/loss_simple_ema", ignore_keys=[], image_size=64, channels=3,
        first_stage_key="image", ckpt_path=None, scale_factor=1.0, scheduler=functools.partial(instantiate_class, 1),
    )
    progress = {"total": {"ready": 10, "completed": 10}, "current": {"ready": 1, "completed": 1}}
    return {
        "epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.4.2",
        "state_dict": state_dict,
        "callbacks": {
            ModelCheckpoint: {"monitor": "val/rec_loss", "best_model_score": torch.tensor(0.25),
                              "best_model_path": "logs/ckpt/epoch=3.ckpt", "best_k_models": {"a.ckpt": np.float64(0.3)},
                              "kth_value": np.array([0.5]), "dirpath": "logs/ckpt"},
            "ModelCheckpoint{'monitor': 'val/rec_loss', 'mode': 'min', 'every_n_train_steps': 0, "
            "'every_n_epochs': 1, 'train_time_interval': None}": {"last_model_path": "last.ckpt", "tried": {1, 2},
                                                                 "kinds": frozenset({"a"}), "raw": b"\x00\x01"},
        },
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [sched.state_dict(), plain.state_dict()],
        "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                     "growth_interval": 2000, "_growth_tracker": 0},
        "loops": {"fit_loop": {"state_dict": {"stage": TrainerFn.FITTING}, "epoch_loop.batch_progress": progress,
                               "epoch_loop.state_dict": {"_batches_that_stepped": 1234}}},
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
        "datamodule_hyper_parameters": AttributeDict2(batch_size=8),
    }


def save(obj, path, legacy: bool):
    with importable(*STAND_INS):
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


FORMATS = pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])


@FORMATS
def test_a_lightning_checkpoint_reads_as_inert_data_and_imports_nothing(tmp_path, legacy):
    sd = ldm_lightning_state_dict()
    path = save(lightning_checkpoint(sd), tmp_path / "model.ckpt", legacy)
    assert "pytorch_lightning" not in sys.modules and "omegaconf" not in sys.modules
    before, CALLED[:] = set(sys.modules), []
    got = read_state_dict(path)
    assert set(sys.modules) == before, "reading a checkpoint imported a module"
    assert CALLED == []
    assert set(got) == set(sd) | {"model_ema.decay", "model_ema.num_updates"}
    assert all(torch.equal(got[k], v) for k, v in sd.items())


def test_a_non_empty_dict_subclass_alone_reads(tmp_path):
    path = save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": AttributeDict(lr=1e-4)}, tmp_path / "a.ckpt",
                legacy=False)
    assert list(read_state_dict(path)) == ["w"]


@FORMATS
def test_a_lightning_checkpoint_converts_through_the_cli(tiny, legacy):
    sd = ldm_lightning_state_dict(ema_offset=0.01)
    path = save(lightning_checkpoint(sd), tiny / "model.ckpt", legacy)
    want = convert_openai_unet(sd, TINY_LDM_UNET, prefix=UNET)
    for args, offset in (([], 0.0), (["--ema"], 0.01)):
        out = tiny / f"m{len(args)}"
        r = runner.invoke(app, ["models", "convert", "ldm", str(path), "--arch", "tiny-ldm", "-o", str(out), *args])
        assert r.exit_code == 0, r.output
        from safetensors.torch import load_file

        unet = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
        assert all(torch.allclose(unet[k], v + offset) for k, v in want.items())
        assert (out / "vqvae" / "diffusion_pytorch_model.safetensors").is_file()


def test_a_legacy_format_adm_file_converts_through_the_cli(tiny):
    sd = adm_state_dict()
    path = tiny / "ffhq_10m.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    with open(path, "rb") as f:
        assert f.read(2) != b"PK"  # not a zip
    assert {k: v.tolist() for k, v in load_state_dict(path).items()} == {k: v.tolist() for k, v in sd.items()}
    r = runner.invoke(app, ["models", "convert", "adm", str(path), "--arch", "tiny-adm", "-o", str(tiny / "m")])
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------- hostile files


class _Runs:
    def __init__(self, func, *args):
        self.call = (func, args)

    def __reduce__(self):
        return self.call


class Outer:
    class Inner:  # pickled through builtins.getattr
        pass


@pytest.mark.parametrize("payload, named", [
    (lambda m: _Runs(os.system, f"touch {m}"), "posix.system"),
    (lambda m: _Runs(subprocess.Popen, ["touch", str(m)]), "subprocess.Popen"),
    (lambda m: _Runs(subprocess.check_call, ["touch", str(m)]), "subprocess.check_call"),
    (lambda m: _Runs(eval, f"open({str(m)!r}, 'w')"), "eval"),
    (lambda m: _Runs(exec, f"open({str(m)!r}, 'w')"), "exec"),
    (lambda m: Outer.Inner(), "getattr"),
], ids=["os.system", "subprocess.Popen", "subprocess.check_call", "eval", "exec", "getattr"])
@FORMATS
def test_a_file_that_names_a_code_runner_is_refused_and_nothing_runs(tiny, payload, named, legacy):
    marker = tiny / "ran"
    path = tiny / "evil.ckpt"
    torch.save({"state_dict": ldm_lightning_state_dict(), "callbacks": {"x": payload(marker)}}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ConversionError, match=f"^evil.ckpt: refused: the checkpoint asks to call {named} "):
        read_state_dict(path)
    r = runner.invoke(app, ["models", "convert", "ldm", str(path), "--arch", "tiny-ldm", "-o", str(tiny / "m")])
    assert r.exit_code == 1 and f"asks to call {named}" in one_line_error(r)
    assert not marker.exists() and not (tiny / "m").exists()


def test_a_function_the_file_names_is_never_called_even_where_it_could_be_imported(tmp_path):
    """The module stays importable while the file is read: an importing unpickler would call it."""
    path = tmp_path / "model.ckpt"
    with importable(instantiate_class, DictConfig, ContainerMetadata):
        torch.save({"state_dict": {"w": torch.ones(2)}, "x": _Runs(instantiate_class, 1), "y": DictConfig({})}, path)
        CALLED[:] = []
        assert list(read_state_dict(path)) == ["w"]
        assert CALLED == []


# --------------------------------------------------------------------------- what stands where a weight belongs


@pytest.mark.parametrize("key, value, says", [
    (UNET + "out.2.weight", "oops", "model.diffusion_model.out.2.weight is a string, not a tensor"),
    (UNET + "out.2.bias", None, "model.diffusion_model.out.2.bias is empty (None), not a tensor"),
    (UNET + "out.2.bias", {"a": 1}, "model.diffusion_model.out.2.bias is a dictionary, not a tensor"),
    (UNET + "out.2.weight", torch.zeros(3, 32, 3, 3, dtype=torch.int64),
     "model.diffusion_model.out.2.weight holds int64 values, not fp16, bf16 or fp32 weights"),
    (UNET + "out.2.weight", torch.zeros(3, 32, 3, 3, dtype=torch.complex64),
     "model.diffusion_model.out.2.weight holds complex64 values, not fp16, bf16 or fp32 weights"),
    ("first_stage_model.quant_conv.bias", 0.5, "first_stage_model.quant_conv.bias is a number, not a tensor"),
    ("first_stage_model.quant_conv.weight", torch.zeros(3, 3, 1, 1, dtype=torch.float64),
     "first_stage_model.quant_conv.weight holds float64 values, not fp16, bf16 or fp32 weights"),
])
def test_a_wrong_entry_where_a_weight_belongs_is_named(tiny, key, value, says):
    sd = ldm_lightning_state_dict()
    sd[key] = value
    path = tiny / "model.ckpt"
    torch.save({"state_dict": sd}, path)
    r = runner.invoke(app, ["models", "convert", "ldm", str(path), "--arch", "tiny-ldm", "-o", str(tiny / "m")])
    line = one_line_error(r)
    assert r.exit_code == 1 and line.endswith(says), line


def test_a_wrong_ema_entry_is_named(tiny):
    sd = ldm_lightning_state_dict()
    sd["model_ema.diffusion_modelout2bias"] = "x"
    path = tiny / "model.ckpt"
    torch.save({"state_dict": sd}, path)
    r = runner.invoke(app, ["models", "convert", "ldm", str(path), "--arch", "tiny-ldm", "--ema", "-o", str(tiny / "m")])
    assert r.exit_code == 1 and one_line_error(r).endswith("--ema: model_ema.diffusion_modelout2bias is a string, "
                                                           "not a tensor")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_and_bfloat16_weights_convert(tiny, dtype):
    sd = {k: v.to(dtype) for k, v in ldm_lightning_state_dict().items()}
    path = tiny / "model.ckpt"
    torch.save({"state_dict": sd}, path)
    r = runner.invoke(app, ["models", "convert", "ldm", str(path), "--arch", "tiny-ldm", "-o", str(tiny / "m")])
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------- attention heads (not in the weights)


SMALL = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", use_scale_shift_norm=True,
             resblock_updown=True)
ADM = dict(learn_sigma=True, class_cond=False, dropout=0.0, use_fp16=False, use_checkpoint=False,
           use_new_attention_order=False, num_heads_upsample=-1)


def _original(**kw):
    return dict(ADM, **SMALL, **kw)


def test_fixed_heads_with_unequal_widths_are_refused():
    """num_heads=4 at levels 32 and 64 channels wide: heads of 8 and 16 channels, which no diffusers config hosts."""
    original = _original(attention_resolutions="32,16", num_heads=4, num_head_channels=-1)
    orig = _build(_adm_cls(), original)
    config = _adm_config(**SMALL, attention_resolutions="32,16", num_head_channels=8)
    diff, scale = _compare(orig, config, 16, T_FLOAT)
    assert diff > 100 * 1e-4  # what converting without the original's settings gives: another function
    with pytest.raises(ConversionError) as info:
        convert_openai_unet(orig.state_dict(), config, original=original)
    message = str(info.value)
    assert "\n" not in message and message.endswith(
        "cannot host this openaimodel UNet: with a fixed head count its attention levels (32, 64 channels) have "
        "heads of 8, 16 channels, but a diffusers UNet has one head width for all levels")


@pytest.mark.parametrize("kw, head_dim, fix", [
    (dict(attention_resolutions="16", num_heads=2, num_head_channels=-1), 16, "set attention_head_dim to 32"),
    (dict(attention_resolutions="32,16", num_heads=1, num_head_channels=-1), 16,
     "set attention_head_dim to null (one head per level)"),
    (dict(attention_resolutions="32,16", num_heads=4, num_head_channels=16), 8, "set attention_head_dim to 16"),
], ids=["fixed-heads-equal-widths", "one-head", "fixed-head-width"])
def test_a_config_with_other_heads_is_refused_and_the_right_one_converts(kw, head_dim, fix):
    original = _original(**kw)
    orig = _build(_adm_cls(), original)
    wrong = _adm_config(**SMALL, attention_resolutions=kw["attention_resolutions"], num_head_channels=head_dim)
    with pytest.raises(ConversionError, match=re.escape(f"gives other attention heads than the original: {fix}") + "$"):
        convert_openai_unet(orig.state_dict(), wrong, original=original)
    right = dict(wrong, attention_head_dim=None if "null" in fix else int(fix.rsplit(" ", 1)[1]))
    convert_openai_unet(orig.state_dict(), right, original=original)
    diff, scale = _compare(orig, right, 16, T_FLOAT)
    _assert_close(diff, scale, f"heads {kw}")


def test_new_attention_order_is_refused():
    original = _original(attention_resolutions="16", num_heads=1, num_head_channels=32, use_new_attention_order=True)
    config = _adm_config(**SMALL, attention_resolutions="16", num_head_channels=32)
    sd = _build(_adm_cls(), original, materialize=False).state_dict()
    with pytest.raises(ConversionError, match="use_new_attention_order=True is not supported"):
        convert_openai_unet(sd, config, original=original)


# -- what torch.load itself would do with a forged file, before or beside the unpickler ---------------------------
# (found by a security review: each of these ran code or wrote a file before the checks below existed)

def _legacy_with(main_pickle: bytes) -> bytes:
    """A non-zip torch.save file around a hand-written main pickle (magic number, protocol, sys info, keys)."""
    import pickle

    head = b"".join(pickle.dumps(x, protocol=2) for x in
                    (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}))
    return head + main_pickle + pickle.dumps([], protocol=2)


def _binunicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + len(b).to_bytes(4, "little") + b


def _build_then_module_pid(patch_name: str, tag: bool = True) -> bytes:
    """Protocol 2: BUILD ``dump_patches``/``__name__`` onto torch's ``_rebuild_tensor_v2`` (an allowed global),
    then a persistent id that makes torch's source check append a diff to ``<__name__>.patch``."""
    set_attrs = (b"N}" + _binunicode("dump_patches") + b"\x88s" + _binunicode("__name__") + _binunicode(patch_name)
                 + b"s\x86b0")
    pid = b"(" + (_binunicode("module") if tag else b"") + b"h\x00" + _binunicode("x.py") + _binunicode("text\n") + b"tQ"
    return b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00" + set_attrs + pid + b"."


def test_a_torchscript_archive_is_refused_before_its_code_runs(tmp_path, capfd):
    class M(torch.nn.Module):  # its __setstate__ is TorchScript code, which torch.load would run (torch.jit.load)
        def __init__(self):
            super().__init__()
            self.w = torch.zeros(1)

        @torch.jit.export
        def __getstate__(self) -> typing.Tuple[torch.Tensor, bool]:
            return (self.w, self.training)

        @torch.jit.export
        def __setstate__(self, state: typing.Tuple[torch.Tensor, bool]) -> None:
            print("THE FILE'S CODE RAN")
            self.w = state[0]
            self.training = state[1]

    path = tmp_path / "evil.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script: deprecated, still what such files hold
        torch.jit.save(torch.jit.script(M()), str(path))
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.load(str(path))  # the control: loading it runs the code
    assert "THE FILE'S CODE RAN" in capfd.readouterr().out
    with pytest.raises(ConversionError, match="^evil.pt: refused: the checkpoint holds TorchScript code"):
        read_state_dict(path)
    assert "THE FILE'S CODE RAN" not in capfd.readouterr().out


def test_a_forged_legacy_file_writes_nothing_and_changes_nothing(tmp_path):
    target = tmp_path / "planted"
    path = tmp_path / "evil.pt"
    path.write_bytes(_legacy_with(_build_then_module_pid(str(target))))
    before = (torch._utils._rebuild_tensor_v2.__name__, getattr(torch._utils._rebuild_tensor_v2, "dump_patches", None))
    with pytest.raises(ConversionError, match="^evil.pt: refused: the checkpoint asks to change the attributes of "
                                              "_rebuild_tensor_v2"):
        read_state_dict(path)
    after = (torch._utils._rebuild_tensor_v2.__name__, getattr(torch._utils._rebuild_tensor_v2, "dump_patches", None))
    assert after == before and not list(tmp_path.glob("planted*"))


def test_a_module_reference_is_refused_in_both_old_formats(tmp_path):
    """The ``"module"`` persistent id of the non-zip format, and the tar format's untagged one: both are the
    source check's, which writes a patch file; torch.save's weights never carry them."""
    import io
    import tarfile

    def no_build(tag):  # the persistent id alone, no attribute setting before it
        pid = b"(" + (_binunicode("module") if tag else b"") + b"ctorch._utils\n_rebuild_tensor_v2\n" + \
              _binunicode("x.py") + _binunicode("text\n") + b"tQ"
        return b"\x80\x02" + pid + b"."

    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(_legacy_with(no_build(True)))
    tar = tmp_path / "tar.pt"
    import pickle
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in (("storages", pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)),
                           ("tensors", pickle.dumps(0, protocol=2)), ("pickle", no_build(False))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    for path in (legacy, tar):
        with pytest.raises(ConversionError, match="refused: the checkpoint holds a reference torch.save never writes"):
            read_state_dict(path)
    assert not list(tmp_path.glob("*.patch"))


@pytest.mark.parametrize("target", ["torch.storage\nTypedStorage", "collections\nCounter"])
def test_a_file_cannot_change_a_class_for_the_whole_process(tmp_path, target):
    module, name = target.split("\n")
    cls = getattr(__import__(module, fromlist=[name]), name)
    attr = "is_sparse" if name == "TypedStorage" else "most_common"
    before = cls.__dict__.get(attr)
    main = (b"\x80\x02c" + target.encode() + b"\nq\x00N}" + _binunicode(attr) + _binunicode("corrupted") + b"s\x86b0"
            + b"}.")
    path = tmp_path / "evil.pt"
    path.write_bytes(_legacy_with(main))
    with pytest.raises(ConversionError, match=f"asks to change the attributes of {name}"):
        read_state_dict(path)
    assert cls.__dict__.get(attr) is before
