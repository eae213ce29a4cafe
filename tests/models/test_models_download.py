"""The papers' original checkpoints: download, sha256 check, safe loading, conversion into the cache, use.

The registry's real entries cannot be fetched here, so these tests build small networks of the
*original* architectures (guided-diffusion's ADM UNet, CompVis's LDM UNet and VQ autoencoder, from
the test-only reference packages), save them in the original file layouts (a ``.pt`` in a filled Hub
cache; a Lightning ``model.ckpt`` inside a zip served from a ``file://`` URL) and drive
``restore models download/convert`` and a restoration through them.  The exact architectures are
proven in test_convert_unet.py / test_convert_vq.py.
"""

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

gd = pytest.importorskip("guided_diffusion.script_util")
ldm_unet = pytest.importorskip("ldm.modules.diffusionmodules.openaimodel")
ldm_model = pytest.importorskip("ldm.modules.diffusionmodules.model")

from restore_cli.cli.app import app  # noqa: E402
from restore_cli.convert import checkpoint as ckpt_mod  # noqa: E402

runner = CliRunner()

TINY_ADM_UNET = {
    "_class_name": "UNet2DModel", "sample_size": 32, "in_channels": 3, "out_channels": 6, "flip_sin_to_cos": True,
    "freq_shift": 0, "block_out_channels": [32, 64], "layers_per_block": 1,
    "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "ResnetUpsampleBlock2D"],
    "downsample_type": "resnet", "upsample_type": "resnet", "attention_head_dim": 16, "norm_num_groups": 32,
    "attn_norm_num_groups": 32, "norm_eps": 1e-5, "resnet_time_scale_shift": "scale_shift", "add_attention": True}
TINY_LDM_UNET = {
    "_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 3, "out_channels": 3, "flip_sin_to_cos": True,
    "freq_shift": 0, "block_out_channels": [32, 64], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "downsample_type": "conv", "upsample_type": "conv", "downsample_padding": 1, "attention_head_dim": 16,
    "norm_num_groups": 32, "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True}
TINY_LDM_VQ = {
    "_class_name": "VQModel", "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": [32, 64], "layers_per_block": 1,
    "latent_channels": 3, "sample_size": 16, "num_vq_embeddings": 16, "norm_num_groups": 32, "vq_embed_dim": 3,
    "scaling_factor": 1.0, "norm_type": "group", "mid_block_add_attention": True}
TINY = {"tiny-adm.unet": TINY_ADM_UNET, "tiny-ldm.unet": TINY_LDM_UNET, "tiny-ldm.vqvae": TINY_LDM_VQ}


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def adm_state_dict():
    m = gd.create_model(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", learn_sigma=True,
                        class_cond=False, use_checkpoint=False, attention_resolutions="16", num_heads=4,
                        num_head_channels=16, num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
                        resblock_updown=True, use_fp16=False, use_new_attention_order=False)
    return _randomise(m).state_dict()


def ldm_lightning_state_dict(ema_offset=0.0):
    unet = _randomise(ldm_unet.UNetModel(image_size=8, in_channels=3, out_channels=3, model_channels=32,
                                         attention_resolutions=[2], num_res_blocks=1, channel_mult=[1, 2],
                                         num_head_channels=16), 1)
    dd = dict(double_z=False, z_channels=3, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
              num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    enc, dec = _randomise(ldm_model.Encoder(**dd), 2), _randomise(ldm_model.Decoder(**dd), 3)
    sd = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    sd |= {f"model_ema.{('diffusion_model.' + k).replace('.', '')}": v + ema_offset for k, v in unet.state_dict().items()}
    sd |= {f"first_stage_model.encoder.{k}": v for k, v in enc.state_dict().items()}
    sd |= {f"first_stage_model.decoder.{k}": v for k, v in dec.state_dict().items()}
    g = torch.Generator().manual_seed(4)
    sd |= {"first_stage_model.quant_conv.weight": torch.randn(3, 3, 1, 1, generator=g) * 0.3,
           "first_stage_model.quant_conv.bias": torch.zeros(3),
           "first_stage_model.post_quant_conv.weight": torch.randn(3, 3, 1, 1, generator=g) * 0.3,
           "first_stage_model.post_quant_conv.bias": torch.zeros(3),
           "first_stage_model.quantize.embedding.weight": torch.randn(16, 3, generator=g),
           "first_stage_model.loss.discriminator.main.0.weight": torch.randn(4, 3, 4, 4, generator=g),  # ignored
           "betas": torch.linspace(1e-4, 2e-2, 1000)}  # LatentDiffusion's own buffers: ignored
    return sd


class LightningCallbackState:
    """Stands for what a Lightning checkpoint pickles besides tensors (a callback's state)."""

    def __init__(self):
        self.best = 1.0


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """Tiny architectures registered for the converters; restore's cache in tmp_path; URL downloads allowed."""
    real = ckpt_mod.architecture
    monkeypatch.setattr(ckpt_mod, "architecture", lambda name: TINY.get(name) or real(name))
    monkeypatch.setitem(ckpt_mod.ARCHITECTURES, "adm", ["ffhq-256", "imagenet-256", "tiny-adm"])
    monkeypatch.setitem(ckpt_mod.ARCHITECTURES, "ldm", ["ldm-ffhq-256", "tiny-ldm"])
    monkeypatch.setenv("RESTORE_CACHE", str(tmp_path / "cache"))
    import restore_cli.models.hub as hub

    monkeypatch.setattr(hub, "_offline", lambda: False)
    return tmp_path


def write_zip(path: Path, sd: dict, member="model.ckpt", extra=None):
    raw = path.with_suffix(".ckpt.tmp")
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 1234, "callbacks": {"cb": extra}}, raw)
    with zipfile.ZipFile(path, "w") as z:
        z.write(raw, f"ffhq/{member}")
    raw.unlink()
    return path


def models_file(tmp_path: Path, url: str, sha: str | None = None, name="tiny-ldm-zoo") -> Path:
    f = tmp_path / "models.toml"
    f.write_text(f'[models.{name}]\nkind = "latent"\nsource = "url"\nformat = "ldm"\nurl = "{url}"\n'
                 f'filename = "model.ckpt"\narchitecture = "tiny-ldm"\nresolution = 16\nlatent_scaling_factor = 1.0\n'
                 + (f'sha256 = "{sha}"\n' if sha else ""))
    return f


def cache_leftovers(tmp_path: Path) -> list[str]:
    root = tmp_path / "cache" / "converted"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def one_line_error(r) -> str:
    """The one error line (a download's progress bar may precede it), and no traceback."""
    lines = [x for x in r.output.strip().splitlines() if x.strip() and "━" not in x and not x.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from PIL import Image
    from skimage import data

    d = tmp_path_factory.mktemp("photo")
    Image.fromarray(data.astronaut()[::32, ::32]).save(d / "astro.png")  # 16x16
    return d / "astro.png"


def test_ldm_zip_from_url_downloads_converts_once_and_runs(tiny, photo):
    from restore_cli.convert.checkpoint import sha256_file

    z = write_zip(tiny / "ffhq.zip", ldm_lightning_state_dict(), extra=LightningCallbackState())
    mf = models_file(tiny, z.as_uri(), sha256_file(z))
    r = runner.invoke(app, ["models", "download", "tiny-ldm-zoo", "--models-file", str(mf)])
    assert r.exit_code == 0, r.output
    folders = list((tiny / "cache" / "converted" / "tiny-ldm-zoo").iterdir())
    assert [f.name for f in folders] == [sha256_file(z)[:16]]  # one complete folder, no temporary left
    rec = json.loads((folders[0] / "restore-source.json").read_text())
    assert rec["sha256_verified"] and rec["url"] == z.as_uri() and rec["ema"] is False
    assert json.loads((folders[0] / "vqvae" / "config.json").read_text())["scaling_factor"] == 1.0
    assert json.loads((folders[0] / "scheduler" / "scheduler_config.json").read_text())["beta_schedule"] == "scaled_linear"
    assert list((folders[0] / "unet").glob("*.safetensors")) and not list(folders[0].rglob("*.ckpt"))
    r = runner.invoke(app, ["models", "list", "--models-file", str(mf)])
    assert "converted in the cache" in r.output
    z.unlink()  # the source is gone: the converted copy is used, no second download
    out = tiny / "out"
    r = runner.invoke(app, ["inpaint", str(photo), "--model", "tiny-ldm-zoo", "--models-file", str(mf), "--method",
                            "resample", "--steps", "3", "--set", "latent_iters=2", "--set", "pixel_iters=2",
                            "--device", "cpu", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["images"][0]["status"] == "ok" and m["config"]["model"]["source_sha256"] == rec["sha256"]


def test_converted_ldm_equals_the_original_networks(tiny):
    """The converted folder's UNet and VQ decode equal the original modules (tiny sizes of the same code)."""
    from diffusers import UNet2DModel, VQModel

    sd = ldm_lightning_state_dict()
    dest = ckpt_mod.convert_ldm(sd, "tiny-ldm", tiny / "conv", {"sha256": "0" * 64})
    unet = UNet2DModel.from_pretrained(dest / "unet").eval()
    ref = ldm_unet.UNetModel(image_size=8, in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[2],
                             num_res_blocks=1, channel_mult=[1, 2], num_head_channels=16).eval()
    ref.load_state_dict({k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")})
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 700.0])
    with torch.no_grad():
        assert (unet(x, t).sample - ref(x, t)).abs().max() < 1e-4
    vq = VQModel.from_pretrained(dest / "vqvae").eval()
    dd = dict(double_z=False, z_channels=3, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
              num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    dec = ldm_model.Decoder(**dd).eval()
    dec.load_state_dict({k[len("first_stage_model.decoder."):]: v for k, v in sd.items() if k.startswith("first_stage_model.decoder.")})
    h = torch.randn(1, 3, 8, 8)
    post = torch.nn.functional.conv2d(h, sd["first_stage_model.post_quant_conv.weight"], sd["first_stage_model.post_quant_conv.bias"])
    with torch.no_grad():
        assert (vq.decode(h, force_not_quantize=True).sample - dec(post)).abs().max() < 1e-4


def test_convert_cli_and_ema_and_never_overwrite(tiny, photo):
    sd = ldm_lightning_state_dict(ema_offset=0.01)
    path = tiny / "model.ckpt"
    torch.save({"state_dict": sd}, path)
    r = runner.invoke(app, ["models", "convert", "ldm", str(path), "--arch", "tiny-ldm", "-o", str(tiny / "m")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["models", "convert", "ldm", str(path), "--arch", "tiny-ldm", "--ema", "-o", str(tiny / "m-ema")])
    assert r.exit_code == 0, r.output
    from safetensors.torch import load_file

    a = load_file(tiny / "m" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tiny / "m-ema" / "unet" / "diffusion_pytorch_model.safetensors")
    assert torch.allclose(b["conv_in.weight"], a["conv_in.weight"] + 0.01)
    # an existing folder is never written over; a bad format or arch is a usage error before anything is read
    for args in (["ldm", str(path), "--arch", "tiny-ldm", "-o", str(tiny / "m")],
                 ["jpeg", str(path), "-o", str(tiny / "x")], ["ldm", str(path), "--arch", "ffhq-256", "-o", str(tiny / "x")],
                 ["adm", str(tiny / "missing.pt"), "--arch", "ffhq-256", "-o", str(tiny / "x")]):
        r = runner.invoke(app, ["models", "convert", *args])
        assert r.exit_code == 2 and one_line_error(r).startswith("usage error")
    # the converted folder works as --model DIR (latent, VQ, scaling factor 1)
    r = runner.invoke(app, ["inpaint", str(photo), "--model", str(tiny / "m"), "--method", "latent-dps", "--steps", "2",
                            "--device", "cpu", "-o", str(tiny / "out"), "-q"])
    assert r.exit_code == 0, r.output
    m = json.loads((tiny / "out" / "metrics.json").read_text())
    assert m["images"][0]["status"] == "ok" and m["config"]["model"]["kind"] == "latent"


@pytest.mark.parametrize("case", ["wrong-sha", "truncated", "no-member", "not-a-zip", "other-architecture", "not-a-checkpoint"])
def test_bad_downloads_are_one_line_and_leave_nothing(tiny, case, monkeypatch):
    z = tiny / "ffhq.zip"
    sha = None
    if case == "wrong-sha":
        write_zip(z, ldm_lightning_state_dict())
        sha = "0" * 64
    elif case == "truncated":
        write_zip(z, ldm_lightning_state_dict())
        import restore_cli.models.hub as hub

        real = hub._open_url

        def short(url):  # the server announces more bytes than it sends
            r = real(url)
            r.headers.replace_header("Content-Length", str(int(r.headers["Content-Length"]) + 1000))
            return r

        monkeypatch.setattr(hub, "_open_url", short)
    elif case == "no-member":
        write_zip(z, ldm_lightning_state_dict(), member="last.ckpt")
    elif case == "not-a-zip":
        z.write_bytes(b"<html>a login page</html>")
    elif case == "other-architecture":
        write_zip(z, {f"model.diffusion_model.{k}": v for k, v in adm_state_dict().items()})
    else:
        with zipfile.ZipFile(z, "w") as zz:
            zz.writestr("ffhq/model.ckpt", b"PK\x03\x04 garbage")
    mf = models_file(tiny, z.as_uri(), sha)
    r = runner.invoke(app, ["models", "download", "tiny-ldm-zoo", "--models-file", str(mf)])
    line = one_line_error(r)
    assert r.exit_code == 1, r.output
    expect = {"wrong-sha": "sha256 mismatch", "truncated": "truncated", "no-member": "does not contain model.ckpt",
              "not-a-zip": "not a valid zip", "other-architecture": "does not match", "not-a-checkpoint": "not a readable"}[case]
    assert expect in line, line
    assert cache_leftovers(tiny) == []


def test_adm_from_a_filled_hub_cache_with_sha_check(tiny, photo, monkeypatch):
    """The Hub path (hf_hub_download at a pinned revision) offline from a filled cache; a wrong pinned sha256
    removes the file and is one line."""
    from restore_cli.convert.checkpoint import sha256_file

    import restore_cli.models.hub as hub

    monkeypatch.setattr(hub, "_offline", lambda: True)  # no metadata request: the pinned sha256 is the reference
    rev = "2" * 40
    snap = tiny / "hub" / "models--restore-tests--adm" / "snapshots" / rev
    snap.mkdir(parents=True)
    (tiny / "hub" / "models--restore-tests--adm" / "refs").mkdir()
    (tiny / "hub" / "models--restore-tests--adm" / "refs" / "main").write_text(rev)
    torch.save(adm_state_dict(), snap / "ffhq_10m.pt")
    good = sha256_file(snap / "ffhq_10m.pt")
    monkeypatch.setenv("HF_HUB_CACHE", str(tiny / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tiny / "hub"))

    def entry(sha):
        f = tiny / f"adm-{sha[:4]}.toml"
        f.write_text(f'[models.tiny-adm]\nkind = "pixel"\nsource = "hub"\nformat = "adm"\nrepo_id = "restore-tests/adm"\n'
                     f'revision = "{rev}"\nfilename = "ffhq_10m.pt"\narchitecture = "tiny-adm"\nresolution = 32\n'
                     f'sha256 = "{sha}"\n')
        return f

    r = runner.invoke(app, ["inpaint", str(photo), "--model", "tiny-adm", "--models-file", str(entry(good)),
                            "--method", "dps", "--steps", "3", "--device", "cpu", "-o", str(tiny / "out"), "-q"])
    assert r.exit_code == 0, r.output
    m = json.loads((tiny / "out" / "metrics.json").read_text())
    assert m["config"]["model"]["resolved_revision"] == rev and m["config"]["model"]["source_sha256"] == good
    assert m["config"]["model"]["loaded_as"]["learned_variance"] is True
    r = runner.invoke(app, ["models", "download", "tiny-adm", "--models-file", str(entry("f" * 64))])
    assert r.exit_code == 1 and "sha256 mismatch" in one_line_error(r)
    assert not (snap / "ffhq_10m.pt").exists()  # the bad file is not kept for a later run to use


class Outer:
    class Inner:
        def __init__(self):
            self.x = 1


def test_checkpoint_loading_runs_no_pickled_code(tmp_path, monkeypatch):
    """weights_only: a checkpoint whose pickle asks to call os.system is refused in one line, and nothing runs;
    an unknown but harmless class (a Lightning callback's state) gets an inert stand-in."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": Evil()}, path)
    with pytest.raises(ckpt_mod.ConversionError, match="refused: the checkpoint asks to call posix.system"):
        ckpt_mod.load_state_dict(path)
    assert not marker.exists()
    torch.save({"state_dict": {"w": torch.ones(2)}, "loops": LightningCallbackState()}, path)
    assert list(ckpt_mod.load_state_dict(path)) == ["w"]
    # a nested class is pickled through builtins.getattr: refused in one line after a single read
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1) or real(*a, **k))
    torch.save({"state_dict": {"w": torch.ones(2)}, "loops": Outer.Inner()}, path)
    with pytest.raises(ckpt_mod.ConversionError, match="refused: the checkpoint asks to call getattr"):
        ckpt_mod.load_state_dict(path)
    assert len(loads) == 1


def test_converted_schedules_are_the_original_configs():
    """ADM: guided-diffusion's linear betas; LDM: ffhq-ldm-vq-4.yaml's "linear" 0.0015-0.0195, which LDM
    builds as linspace(sqrt(start), sqrt(end))^2 (diffusers' scaled_linear)."""
    import numpy as np
    from ldm.modules.diffusionmodules.util import make_beta_schedule

    from restore_cli.priors.base import Schedule

    ldm = Schedule.from_scheduler_config(ckpt_mod.LDM_SCHEDULER)
    betas = make_beta_schedule("linear", 1000, linear_start=0.0015, linear_end=0.0195)
    assert np.allclose(ldm.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-5)
    adm = Schedule.from_scheduler_config(ckpt_mod.ADM_SCHEDULER)
    assert np.allclose(adm.alphas_cumprod.numpy(), np.cumprod(1 - gd.gd.get_named_beta_schedule("linear", 1000)), rtol=1e-5)


@pytest.mark.parametrize("hub_sha_ok", [True, False])
def test_unpinned_hub_file_is_checked_against_the_hubs_own_sha256(tiny, monkeypatch, hub_sha_ok):
    """Online, with no sha256 pinned: the Hub's LFS sha256 of the file at the pinned revision is the reference,
    and the resolved commit is recorded (the network calls are stood in for)."""
    import types

    import huggingface_hub

    from restore_cli.convert.checkpoint import sha256_file

    f = tiny / "dl" / "diffusion_ffhq_10m.pt"
    f.parent.mkdir()
    torch.save(adm_state_dict(), f)
    good, commit = sha256_file(f), "3" * 40
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, token=None: types.SimpleNamespace(
        etag=f'"{good if hub_sha_ok else "a" * 64}"', commit_hash=commit))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(f))
    mf = tiny / "adm.toml"
    mf.write_text('[models.tiny-adm]\nkind = "pixel"\nsource = "hub"\nformat = "adm"\nrepo_id = "restore-tests/adm"\n'
                  'revision = "main"\nfilename = "diffusion_ffhq_10m.pt"\narchitecture = "tiny-adm"\nresolution = 32\n')
    r = runner.invoke(app, ["models", "download", "tiny-adm", "--models-file", str(mf)])
    if hub_sha_ok:
        assert r.exit_code == 0, r.output
        rec = json.loads(next((tiny / "cache" / "converted" / "tiny-adm").glob("*/restore-source.json")).read_text())
        assert rec["sha256"] == good and rec["sha256_verified"] and rec["resolved_revision"] == commit
    else:
        assert r.exit_code == 1 and "sha256 mismatch" in one_line_error(r)
        assert not f.exists() and cache_leftovers(tiny) == []
