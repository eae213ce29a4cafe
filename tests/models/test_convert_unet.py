"""openaimodel UNet -> diffusers UNet2DModel: proven equal to the original code on random weights.

The original networks (guided-diffusion's ADM UNet, CompVis's LDM UNet) are test-only references.
Every parameter is re-randomised (their output convs start at zero), weights with a 1/sqrt(fan_in)
scale so that activations stay O(1); outputs are then compared in fp32 with an absolute tolerance
of 1e-4 (outputs have std ~0.5-1 and max ~3-5).
"""

from __future__ import annotations

import pytest
import torch

from restore_cli.convert import ConversionError, architecture
from restore_cli.convert.unet import convert_openai_unet

TOL = 1e-4

FFHQ = dict(image_size=256, num_channels=128, num_res_blocks=1, learn_sigma=True, attention_resolutions="16",
            num_head_channels=64, num_heads=4, use_scale_shift_norm=True, resblock_updown=True, channel_mult="",
            class_cond=False, dropout=0.0, use_fp16=False, use_new_attention_order=False, use_checkpoint=False,
            num_heads_upsample=-1)
IMAGENET = dict(FFHQ, num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8")
LDM = dict(image_size=64, in_channels=3, out_channels=3, model_channels=224, attention_resolutions=[8, 4, 2],
           num_res_blocks=2, channel_mult=[1, 2, 3, 4], num_head_channels=32)
PARAMS = {"ffhq-256.unet": 93_563_910, "imagenet-256.unet": 552_814_086, "ldm-ffhq-256.unet": 274_056_163}
T_FLOAT = torch.tensor([10.0, 500.5, 999.0])  # fractional t, as the priors call the UNet
T_LONG = torch.tensor([10, 500, 999])


def _adm_cls():
    return pytest.importorskip("guided_diffusion.script_util").create_model


def _ldm_cls():
    return pytest.importorskip("ldm.modules.diffusionmodules.openaimodel").UNetModel


def _build(factory, kwargs, materialize=True, seed=0):
    """The original network, built on `meta` (no init cost), then every parameter drawn afresh."""
    with torch.device("meta"):
        model = factory(**kwargs)
    if not materialize:
        return model
    model = model.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=g)
            elif name.endswith("weight"):  # GroupNorm scale
                p.normal_(1.0, 0.1, generator=g)
            else:
                p.normal_(0.0, 0.1, generator=g)
    return model


def _nparams(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _diffusers(config, state_dict, meta=True):
    from diffusers import UNet2DModel

    if meta:  # no random init of a second copy; `assign` puts the converted tensors in place
        with torch.device("meta"):
            model = UNet2DModel.from_config(config)
    else:
        model = UNet2DModel.from_config(config)
    model.load_state_dict(state_dict, strict=True, assign=meta)
    return model.eval()


def _compare(orig, config, size, t, seed=1, name=None):
    """Max |original - converted| on a random input; returns (diff, output std)."""
    conv = _diffusers(config, convert_openai_unet(orig.state_dict(), config, name=name))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(t), orig.in_channels, size, size, generator=g)
    with torch.no_grad():
        want = orig(x, t)
        got = conv(x, t).sample
    assert got.shape == want.shape
    assert torch.isfinite(want).all()
    return (got - want).abs().max().item(), want.std().item()


def _assert_close(diff, scale, label):
    print(f"{label}: max |diff| = {diff:.3g} (output std {scale:.3g})")
    assert 0.1 < scale < 10, "activations out of a sane range; the comparison would be meaningless"
    assert diff < TOL


# --------------------------------------------------------------------------- exact architectures


@pytest.mark.parametrize("name, factory, kwargs", [
    ("ffhq-256.unet", _adm_cls, FFHQ),
    ("imagenet-256.unet", _adm_cls, IMAGENET),
    ("ldm-ffhq-256.unet", _ldm_cls, LDM),
])
def test_exact_architecture_param_count_and_mapping(name, factory, kwargs):
    """Meta tensors only: counts equal, every key maps, nothing is left over (strict load)."""
    from diffusers import UNet2DModel

    orig = _build(factory(), kwargs, materialize=False)
    config = architecture(name)
    assert config["_class_name"] == "UNet2DModel"
    assert _nparams(orig) == PARAMS[name]
    with torch.device("meta"):
        target = UNet2DModel.from_config(config)
    assert _nparams(target) == PARAMS[name]
    converted = convert_openai_unet(orig.state_dict(), config)
    assert list(converted) == list(target.state_dict())
    assert sum(v.numel() for v in converted.values()) == PARAMS[name]
    target.load_state_dict(converted, strict=True, assign=True)


@pytest.fixture(scope="module")
def ffhq():
    return _build(_adm_cls(), FFHQ)


@pytest.fixture(scope="module")
def ldm():
    return _build(_ldm_cls(), LDM)


def test_ffhq_256_matches_original(ffhq):
    # the architecture is resolution-agnostic; 32x32 is the smallest input for 5 downsamplings
    diff, scale = _compare(ffhq, architecture("ffhq-256.unet"), 32, T_FLOAT)
    _assert_close(diff, scale, "ffhq-256 @32")


def test_ldm_ffhq_256_matches_original(ldm):
    diff, scale = _compare(ldm, architecture("ldm-ffhq-256.unet"), 16, T_FLOAT[1:])
    _assert_close(diff, scale, "ldm-ffhq-256 @16")


@pytest.mark.parametrize("t", [T_FLOAT, T_LONG, torch.tensor([0.25, 1.0, 998.75])])
def test_timestep_embedding_agrees(ffhq, t):
    """Float and integer t give the same embedding in both (guided-diffusion takes fractional t)."""
    from guided_diffusion.nn import timestep_embedding

    config = architecture("ffhq-256.unet")
    conv = _diffusers(config, convert_openai_unet(ffhq.state_dict(), config))
    with torch.no_grad():
        want = ffhq.time_embed(timestep_embedding(t, ffhq.model_channels))
        got = conv.time_embedding(conv.time_proj(t))
    assert (got - want).abs().max().item() < 1e-5


def test_ldm_timestep_embedding_agrees(ldm):
    from ldm.modules.diffusionmodules.util import timestep_embedding

    config = architecture("ldm-ffhq-256.unet")
    conv = _diffusers(config, convert_openai_unet(ldm.state_dict(), config))
    with torch.no_grad():
        for t in (T_FLOAT, T_LONG):
            want = ldm.time_embed(timestep_embedding(t, ldm.model_channels))
            got = conv.time_embedding(conv.time_proj(t))
            assert (got - want).abs().max().item() < 1e-5


@pytest.mark.slow
def test_ffhq_256_matches_original_at_256(ffhq):
    diff, scale = _compare(ffhq, architecture("ffhq-256.unet"), 256, T_FLOAT[1:])
    _assert_close(diff, scale, "ffhq-256 @256")


@pytest.mark.slow
def test_ldm_ffhq_256_matches_original_at_64(ldm):
    diff, scale = _compare(ldm, architecture("ldm-ffhq-256.unet"), 64, T_FLOAT[1:])
    _assert_close(diff, scale, "ldm-ffhq-256 @64")


@pytest.mark.slow
def test_imagenet_256_matches_original():
    orig = _build(_adm_cls(), IMAGENET)
    assert _nparams(orig) == PARAMS["imagenet-256.unet"]
    diff, scale = _compare(orig, architecture("imagenet-256.unet"), 64, T_FLOAT[1:])
    _assert_close(diff, scale, "imagenet-256 @64")


# --------------------------------------------------------------------------- smaller variants


def _adm_config(image_size, num_channels, num_res_blocks, channel_mult, attention_resolutions, num_head_channels,
                use_scale_shift_norm, resblock_updown, learn_sigma=True):
    """The UNet2DModel config of a guided-diffusion `create_model` call (channel_mult as a string)."""
    mults = [int(m) for m in channel_mult.split(",")]
    attn = {image_size // int(r) for r in attention_resolutions.split(",")}
    levels = [2 ** i in attn for i in range(len(mults))]
    plain_down, plain_up = ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if resblock_updown else \
        ("DownBlock2D", "UpBlock2D")
    kind = "resnet" if resblock_updown else "conv"
    return {
        "_class_name": "UNet2DModel", "sample_size": image_size, "in_channels": 3,
        "out_channels": 6 if learn_sigma else 3, "block_out_channels": [m * num_channels for m in mults],
        "layers_per_block": num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if a else plain_down for a in levels],
        "up_block_types": ["AttnUpBlock2D" if a else plain_up for a in reversed(levels)],
        "downsample_type": kind, "upsample_type": kind, "attention_head_dim": num_head_channels,
        "resnet_time_scale_shift": "scale_shift" if use_scale_shift_norm else "default",
        "attn_norm_num_groups": 32, "norm_num_groups": 32, "flip_sin_to_cos": True, "freq_shift": 0,
    }


SMALL = [
    dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2,2", attention_resolutions="16,8",
         num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True),
    dict(image_size=32, num_channels=32, num_res_blocks=2, channel_mult="1,2,3", attention_resolutions="32,8",
         num_head_channels=32, use_scale_shift_norm=False, resblock_updown=False, learn_sigma=False),
    dict(image_size=32, num_channels=64, num_res_blocks=2, channel_mult="1,1,2", attention_resolutions="16",
         num_head_channels=64, use_scale_shift_norm=True, resblock_updown=False),
]


@pytest.mark.parametrize("kw, t", [(SMALL[0], T_FLOAT), (SMALL[0], T_LONG), (SMALL[1], T_FLOAT), (SMALL[2], T_FLOAT)],
                         ids=["updown-scaleshift", "updown-scaleshift-long-t", "conv-resample",
                              "conv-resample-scaleshift"])
def test_small_adm_variants_convert(kw, t):
    create_model = _adm_cls()
    orig = _build(create_model, dict(FFHQ, num_heads=1, **kw))
    config = _adm_config(**kw)
    diff, scale = _compare(orig, config, 16, t)
    _assert_close(diff, scale, f"small ADM {kw}")


def test_small_ldm_variant_converts_into_a_randomly_initialised_model():
    factory = _ldm_cls()
    orig = _build(factory, dict(LDM, model_channels=32, channel_mult=[1, 2], attention_resolutions=[2],
                                num_res_blocks=1, num_head_channels=16))
    config = dict(architecture("ldm-ffhq-256.unet"), block_out_channels=[32, 64], layers_per_block=1,
                  down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
                  attention_head_dim=16)
    conv = _diffusers(config, convert_openai_unet(orig.state_dict(), config), meta=False)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (conv(x, T_FLOAT[:2]).sample - orig(x, T_FLOAT[:2])).abs().max().item()
    assert diff < TOL


# --------------------------------------------------------------------------- strictness


def _meta_sd(factory, kwargs, prefix=""):
    return {prefix + k: v for k, v in _build(factory(), kwargs, materialize=False).state_dict().items()}


def _error(state_dict, name, **kw) -> str:
    with pytest.raises(ConversionError) as info:
        convert_openai_unet(state_dict, architecture(name), **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_ldm_checkpoint_into_ffhq_config_is_refused():
    message = _error(_meta_sd(_ldm_cls, LDM), "ffhq-256.unet")
    assert message.startswith("checkpoint does not match the ffhq-256 ADM UNet")


def test_ffhq_checkpoint_into_imagenet_config_is_refused():
    message = _error(_meta_sd(_adm_cls, FFHQ), "imagenet-256.unet")
    assert message.startswith("checkpoint does not match the imagenet-256 ADM UNet")


def test_missing_key_is_named():
    sd = _meta_sd(_adm_cls, FFHQ)
    del sd["input_blocks.3.0.in_layers.0.weight"]
    message = _error(sd, "ffhq-256.unet")
    assert message == "checkpoint does not match the ffhq-256 ADM UNet (DPS ffhq_10m.pt): " \
                      "missing input_blocks.3.0.in_layers.0.weight"


def test_unexpected_key_is_named():
    sd = _meta_sd(_adm_cls, FFHQ)
    sd["label_emb.weight"] = torch.empty(1000, 512, device="meta")
    assert _error(sd, "ffhq-256.unet").endswith(": unexpected label_emb.weight")


def test_reshaped_tensor_is_named():
    sd = _meta_sd(_adm_cls, FFHQ)
    key = "input_blocks.9.1.qkv.weight"  # the 16x16 attention
    assert tuple(sd[key].shape) == (1536, 512, 1)
    sd[key] = sd[key].reshape(1536, 512)
    assert _error(sd, "ffhq-256.unet").endswith(f": shape of {key} is [1536, 512], expected [1536, 512, 1]")


def test_prefix_selects_keys():
    sd = _meta_sd(_ldm_cls, LDM, prefix="model.diffusion_model.")
    sd["first_stage_model.encoder.conv_in.weight"] = torch.empty(128, 3, 3, 3, device="meta")
    sd["model_ema.decay"] = torch.empty((), device="meta")
    converted = convert_openai_unet(sd, architecture("ldm-ffhq-256.unet"), prefix="model.diffusion_model.")
    assert sum(v.numel() for v in converted.values()) == PARAMS["ldm-ffhq-256.unet"]
    # without the prefix the Lightning keys are all unexpected; with a wrong one nothing is left
    assert "missing time_embed.0.weight" in _error(sd, "ldm-ffhq-256.unet")
    assert _error(sd, "ldm-ffhq-256.unet", prefix="model.x.").endswith("no keys starting with 'model.x.'")
    del sd["model.diffusion_model.out.2.bias"]
    assert _error(sd, "ldm-ffhq-256.unet", prefix="model.diffusion_model.").endswith(
        "missing model.diffusion_model.out.2.bias")


def test_name_defaults_to_the_matching_committed_architecture():
    sd = _meta_sd(_adm_cls, FFHQ)
    del sd["out.0.bias"]
    for name in PARAMS:
        with pytest.raises(ConversionError, match=name.removesuffix(".unet")):
            convert_openai_unet(sd, architecture(name))
    with pytest.raises(ConversionError, match="^checkpoint does not match the my UNet: "):
        convert_openai_unet(sd, architecture("ffhq-256.unet"), name="my UNet")


@pytest.mark.parametrize("change", [
    dict(flip_sin_to_cos=False), dict(freq_shift=1), dict(norm_num_groups=16), dict(attn_norm_num_groups=None),
    dict(up_block_types=["AttnUpBlock2D"] + ["ResnetUpsampleBlock2D"] * 5), dict(num_class_embeds=1000),
])
def test_config_that_cannot_host_openaimodel_is_refused(change):
    config = dict(architecture("ffhq-256.unet"), **change)
    with pytest.raises(ConversionError, match="cannot host an openaimodel UNet") as info:
        convert_openai_unet({"x": torch.empty(1)}, config)
    assert "\n" not in str(info.value)
