"""convert.vq: CompVis's LDM VQ-f4 first stage -> diffusers VQModel, equal to the original code.

The original is rebuilt from CompVis's ``Encoder``/``Decoder`` (the ``ldm`` package, test-only) plus
the two 1x1 quant convs and the codebook, with every parameter re-randomised, so a wrong mapping
(e.g. the decoder's reversed up-block order) cannot hide behind default inits.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

ldm_model = pytest.importorskip("ldm.modules.diffusionmodules.model")

from diffusers import VQModel  # noqa: E402

from restore_cli.convert import ConversionError, architecture  # noqa: E402
from restore_cli.convert.vq import convert_ldm_vq  # noqa: E402

ARCH = "ldm-ffhq-256.vqvae"
PREFIX = "first_stage_model."
# configs/latent-diffusion/ffhq-ldm-vq-4.yaml, first_stage_config.params
EMBED_DIM, N_EMBED = 3, 8192
DDCONFIG = dict(
    double_z=False, z_channels=3, resolution=256, in_channels=3, out_ch=3, ch=128,
    ch_mult=[1, 2, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0,
)  # fmt: skip
TOL = 1e-4


class OriginalVQ(nn.Module):
    """LDM's VQModel (inference path) from its parts; ``state_dict()`` has the original key layout."""

    def __init__(self):
        super().__init__()
        self.encoder = ldm_model.Encoder(**DDCONFIG)
        self.decoder = ldm_model.Decoder(**DDCONFIG)
        self.quant_conv = nn.Conv2d(DDCONFIG["z_channels"], EMBED_DIM, 1)
        self.post_quant_conv = nn.Conv2d(EMBED_DIM, DDCONFIG["z_channels"], 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(N_EMBED, EMBED_DIM)

    def encode(self, x):  # VQModelInterface.encode: the pre-quantisation latent
        return self.quant_conv(self.encoder(x))

    def nearest(self, h):
        """Codebook indices [B, H, W]: argmin of the squared distance to the codebook rows."""
        e = self.quantize.embedding.weight
        z = h.permute(0, 2, 3, 1)
        d = (z * z).sum(-1, keepdim=True) + (e * e).sum(-1) - 2 * z @ e.T
        return d.argmin(-1)

    def decode(self, h, quantize=True):
        if quantize:
            h = self.quantize.embedding(self.nearest(h)).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(h))


def _randomise(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in**0.5)
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))


@pytest.fixture(scope="module")
def pair():
    """(original, converted diffusers model, original Lightning-style state dict)."""
    torch.manual_seed(0)
    original = OriginalVQ().eval()
    _randomise(original)
    ckpt = {PREFIX + k: v.clone() for k, v in original.state_dict().items()}
    # what else a Lightning checkpoint carries: the diffusion UNet, schedule buffers, loss module
    ckpt["model.diffusion_model.out.2.weight"] = torch.zeros(3, 224, 3, 3)
    ckpt["betas"] = torch.zeros(1000)
    ckpt[PREFIX + "loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)
    ckpt[PREFIX + "loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(64, 3, 3, 3)
    model = VQModel.from_config(architecture(ARCH)).eval()
    model.load_state_dict(convert_ldm_vq(ckpt, architecture(ARCH)), strict=True)
    return original, model, ckpt


def test_config_hosts_the_original_exactly(pair):
    original, model, _ = pair
    cfg = architecture(ARCH)
    assert cfg["_class_name"] == "VQModel"
    assert model.config.scaling_factor == 1.0  # LDM's VQ latents are not scaled
    assert model.config.num_vq_embeddings == N_EMBED and model.config.vq_embed_dim == EMBED_DIM
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(original) == 55_322_782
    assert len(model.state_dict()) == len(original.state_dict()) == 205


def _compare(original, model, size: int, seed: int = 1) -> dict[str, float | int]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        h_ref = original.encode(x)
        h = model.encode(x).latents
        assert h.shape == (1, EMBED_DIM, size // 4, size // 4)
        diffs = {"encode": (h - h_ref).abs().max().item()}

        # well-separated lookup: move each latent halfway to its nearest codeword; the point stays
        # inside that codeword's Voronoi cell by >= 1/4 of the gap to any other codeword, so a
        # 1e-6 difference between the two argmin implementations cannot flip an index
        idx = original.nearest(h_ref)
        h_q = 0.5 * (h_ref + original.quantize.embedding(idx).permute(0, 3, 1, 2))
        ref_idx = original.nearest(h_q)
        _, _, (_, _, our_idx) = model.quantize(h_q)
        assert torch.equal(ref_idx, idx)
        assert torch.equal(our_idx.reshape(ref_idx.shape), ref_idx), "quantised indices differ"
        diffs["decode_quantised"] = (model.decode(h_q).sample - original.decode(h_q)).abs().max().item()

        # without quantisation, on the raw latent
        out = model.decode(h_ref, force_not_quantize=True).sample
        diffs["decode_unquantised"] = (out - original.decode(h_ref, quantize=False)).abs().max().item()
        # on the raw latents (not separated) the lookups agree except at near-ties: where they differ,
        # both codewords must be (float64) equally near, up to float32 rounding
        _, _, (_, _, raw_idx) = model.quantize(h_ref)
        raw_idx = raw_idx.reshape(idx.shape)
        z, e = h_ref.permute(0, 2, 3, 1).double(), original.quantize.embedding.weight.double()
        gap = ((z - e[raw_idx]).square().sum(-1) - (z - e[idx]).square().sum(-1)).abs()
        diffs["raw_index_mismatches"] = (raw_idx != idx).sum().item()
        diffs["raw_mismatch_sqdist_gap"] = gap.max().item()
    return diffs


def _check(original, model, size: int) -> None:
    t = time.perf_counter()
    diffs = _compare(original, model, size)
    shown = ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in diffs.items())
    print(f"\n{size}x{size}: max |diff| {shown} ({time.perf_counter() - t:.1f} s)")
    for name in ("encode", "decode_quantised", "decode_unquantised"):
        assert diffs[name] < TOL, (name, diffs)
    assert diffs["raw_mismatch_sqdist_gap"] < 1e-5, diffs  # mismatches only at near-ties


def test_equal_to_original_small(pair):
    original, model, _ = pair
    _check(original, model, 32)


@pytest.mark.slow
def test_equal_to_original_256(pair):
    original, model, _ = pair
    _check(original, model, 256)


def test_bare_state_dict_and_dtype(pair):
    original, model, _ = pair
    bare = original.state_dict()
    bare["loss.logvar"] = torch.zeros(())  # the loss module is ignored
    converted = convert_ldm_vq(bare, architecture(ARCH), prefix="")
    assert converted.keys() == model.state_dict().keys()
    assert converted["encoder.mid_block.attentions.0.to_q.weight"].shape == (512, 512)
    # diffusers' first up block is LDM's last-indexed level (the one applied first)
    up0 = "decoder.up_blocks.0.resnets.0.conv1.weight"
    assert torch.equal(converted[up0], bare["decoder.up.2.block.0.conv1.weight"])
    half = convert_ldm_vq({k: v.half() for k, v in bare.items()}, architecture(ARCH), prefix="")
    assert all(v.dtype == torch.float16 for v in half.values())


def _error(state_dict, prefix=PREFIX) -> str:
    with pytest.raises(ConversionError) as info:
        convert_ldm_vq(state_dict, architecture(ARCH), prefix=prefix)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("checkpoint does not match the LDM VQ-f4 autoencoder: ")
    return msg


def test_bad_checkpoints(pair):
    _, model, ckpt = pair
    sd = dict(ckpt)
    del sd[PREFIX + "decoder.up.0.block.2.conv2.bias"]
    assert "missing key 'first_stage_model.decoder.up.0.block.2.conv2.bias'" in _error(sd)

    sd = dict(ckpt)
    sd[PREFIX + "encoder.mid.attn_1.q.weight"] = torch.zeros(512, 512, 3, 3)
    assert "'first_stage_model.encoder.mid.attn_1.q.weight' has shape [512, 512, 3, 3]" in _error(sd)

    # KL-f8-like: double_z (6 latent channels) -> shape mismatch
    sd = dict(ckpt)
    sd[PREFIX + "encoder.conv_out.weight"] = torch.zeros(6, 512, 3, 3)
    assert "expected [3, 512, 3, 3]" in _error(sd)

    # a fourth level / an extra layer
    sd = dict(ckpt)
    sd[PREFIX + "encoder.down.3.block.0.conv1.weight"] = torch.zeros(512, 512, 3, 3)
    assert "unexpected key 'first_stage_model.encoder.down.3.block.0.conv1.weight'" in _error(sd)

    # another model: an already-converted diffusers state dict, or a checkpoint without a first stage
    msg = _error(model.state_dict(), prefix="")
    assert "unexpected key 'encoder.down_blocks.0.resnets.0.norm1.weight'" in msg
    unet_only = {"model.diffusion_model.out.2.weight": torch.zeros(3)}
    assert "no keys start with 'first_stage_model.'" in _error(unet_only)
