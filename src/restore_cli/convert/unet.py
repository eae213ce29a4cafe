"""OpenAI/CompVis ``openaimodel`` UNet state dicts -> diffusers ``UNet2DModel``.

One converter serves guided-diffusion's ADM UNet (DPS's ``ffhq_10m.pt``, OpenAI's
``256x256_diffusion_uncond.pt``) and CompVis's LDM UNet (``ldm.modules.diffusionmodules.openaimodel``):
both build the same module tree, so the block layout is read off the diffusers config (an empty
``UNet2DModel`` built on the ``meta`` device) and walked in the order in which ``openaimodel`` numbers
its ``input_blocks`` / ``output_blocks``.

How the original settings map to ``UNet2DModel`` options
--------------------------------------------------------
============================================  =====================================================
openaimodel                                   diffusers ``UNet2DModel``
============================================  =====================================================
``model_channels * channel_mult``             ``block_out_channels`` (one entry per level)
``num_res_blocks``                            ``layers_per_block`` (up blocks get one more resnet,
                                              as ``output_blocks`` do)
``attention_resolutions`` (ds = 2**level)     ``AttnDownBlock2D`` / ``AttnUpBlock2D`` at those levels
                                              (ADM's ``create_model`` takes resolutions: ds =
                                              image_size // res); the middle block always attends
``num_head_channels``                         ``attention_head_dim`` (heads = channels // head dim)
``resblock_updown=True``                      ``ResnetDownsampleBlock2D`` / ``ResnetUpsampleBlock2D``,
                                              ``downsample_type="resnet"``, ``upsample_type="resnet"``
                                              (avg-pool / nearest resampling inside a ResBlock)
``resblock_updown=False, conv_resample``      ``DownBlock2D`` / ``UpBlock2D``, ``downsample_type="conv"``,
                                              ``upsample_type="conv"``, ``downsample_padding=1``
``use_scale_shift_norm=True``                 ``resnet_time_scale_shift="scale_shift"`` (and
                                              ``attn_norm_num_groups=32``: otherwise diffusers drops
                                              the mid-block attention's GroupNorm in this mode)
``use_scale_shift_norm=False``                ``resnet_time_scale_shift="default"``
``normalization`` = ``GroupNorm32(32, ch)``   ``norm_num_groups=32``, ``norm_eps=1e-5``
``timestep_embedding`` (``[cos, sin]``,       ``time_embedding_type="positional"``,
frequencies ``exp(-ln(1e4) i / half)``)       ``flip_sin_to_cos=True``, ``freq_shift=0``
``learn_sigma``                               ``out_channels = 2 * in_channels``
============================================  =====================================================

Module names: ``time_embed.{0,2}`` -> ``time_embedding.linear_{1,2}``; ``input_blocks.0.0`` ->
``conv_in``; ResBlock ``in_layers.{0,2}`` / ``emb_layers.1`` / ``out_layers.{0,3}`` / ``skip_connection``
-> ``norm1`` / ``conv1`` / ``time_emb_proj`` / ``norm2`` / ``conv2`` / ``conv_shortcut``; conv
``Downsample.op`` -> ``downsamplers.0.conv``; ``Upsample.conv`` -> ``upsamplers.0.conv``;
AttentionBlock ``norm`` / ``qkv`` / ``proj_out`` -> ``group_norm`` / ``to_q,to_k,to_v`` / ``to_out.0``;
``out.{0,2}`` -> ``conv_norm_out`` / ``conv_out``.

Why the attention weights are re-ordered
----------------------------------------
The original ``qkv`` is one 1x1 ``Conv1d`` producing ``3 * C`` channels. ``QKVAttentionLegacy`` (the
default, ``use_new_attention_order=False``, used by all three supported checkpoints) reshapes them as
``[heads, 3, C / heads]``: *per head*, the rows for q, k and v are three contiguous blocks. diffusers
has separate ``to_q`` / ``to_k`` / ``to_v`` ``Linear`` layers whose rows are ``[heads, C / heads]``.
So the ``qkv`` weight is viewed as ``[heads, 3, C / heads, C]`` and slice 0 / 1 / 2 (flattened back to
``[C, C]``) becomes ``to_q`` / ``to_k`` / ``to_v``; a plain thirds split would mix the heads. Conv1d
weights ``[out, in, 1]`` lose their trailing 1 to become ``Linear`` weights. The scaling agrees:
legacy multiplies q and k by ``(C / heads) ** -1/4`` each, diffusers scales by ``(C / heads) ** -1/2``.
``QKVAttention`` (``use_new_attention_order=True``, thirds first, then heads) cannot be told apart
from the weights alone and is not supported.

Not hostable by ``UNet2DModel`` (rejected by the strict key/shape check or by the config check):
class-conditional models (``label_emb``), spatial transformers (cross-attention LDMs), and
non-integer channel multipliers that break ``block_out_channels[0] == model_channels``.

Head counts are not in the weights. A fixed ``num_heads`` with different widths per attention
level (diffusers fixes the head *width*), a ``num_heads_upsample`` that gives the up path other
heads, and ``use_new_attention_order`` are refused only when the caller passes the original's
settings (``original=``); a config whose ``attention_head_dim`` disagrees with them is refused too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import ConversionError, architecture, weight_problem

__all__ = ["convert_openai_unet"]

#: committed configs and how error messages call them
_KNOWN = {
    "ffhq-256.unet": "ffhq-256 ADM UNet (DPS ffhq_10m.pt)",
    "imagenet-256.unet": "imagenet-256 ADM UNet (OpenAI 256x256_diffusion_uncond.pt)",
    "ldm-ffhq-256.unet": "ldm-ffhq-256 LDM UNet (CompVis ffhq-ldm-vq-4)",
}

#: openaimodel ResBlock submodule -> diffusers ResnetBlock2D submodule
_RESBLOCK = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
)

_DOWN_TYPES = ("DownBlock2D", "ResnetDownsampleBlock2D", "AttnDownBlock2D")
_UP_TYPES = ("UpBlock2D", "ResnetUpsampleBlock2D", "AttnUpBlock2D")


@dataclass(frozen=True)
class _Rule:
    """One original tensor: its key, the shape it must have, the diffusers keys it becomes."""

    source: str
    shape: tuple[int, ...]
    targets: tuple[str, ...]
    convert: Callable[[Tensor], tuple[Tensor, ...]]


def _same(t: Tensor) -> tuple[Tensor, ...]:
    return (t,)


def _squeeze(t: Tensor) -> tuple[Tensor, ...]:
    return (t.reshape(t.shape[:2]),)


def _split_legacy_qkv(heads: int) -> Callable[[Tensor], tuple[Tensor, ...]]:
    def split(t: Tensor) -> tuple[Tensor, ...]:
        rest = t.shape[1:2]  # weight [3C, Cin, 1] -> Cin; bias [3C] -> ()
        width = t.shape[0] // 3
        per_head = t.reshape(heads, 3, width // heads, *rest)
        return tuple(per_head[:, i].reshape(width, *rest).clone() for i in range(3))

    return split


def _direct(rules: list[_Rule], source: str, target: str, module: nn.Module, rename=None) -> None:
    for name, p in module.named_parameters():
        src = rename(name) if rename else name
        rules.append(_Rule(f"{source}.{src}", tuple(p.shape), (f"{target}.{name}",), _same))


def _resblock(rules: list[_Rule], source: str, target: str, module: nn.Module) -> None:
    for src, dst in _RESBLOCK:
        sub = getattr(module, dst, None)
        if sub is not None:
            _direct(rules, f"{source}.{src}", f"{target}.{dst}", sub)


def _attention(rules: list[_Rule], source: str, target: str, module: nn.Module) -> None:
    if module.group_norm is not None:
        _direct(rules, f"{source}.norm", f"{target}.group_norm", module.group_norm)
    width, channels = module.to_q.weight.shape
    qkv = _split_legacy_qkv(module.heads)
    names = tuple(f"{target}.to_{x}" for x in "qkv")
    rules.append(_Rule(f"{source}.qkv.weight", (3 * width, channels, 1), tuple(f"{n}.weight" for n in names), qkv))
    rules.append(_Rule(f"{source}.qkv.bias", (3 * width,), tuple(f"{n}.bias" for n in names), qkv))
    out = module.to_out[0]
    rules.append(_Rule(f"{source}.proj_out.weight", (*out.weight.shape, 1), (f"{target}.to_out.0.weight",), _squeeze))
    rules.append(_Rule(f"{source}.proj_out.bias", tuple(out.bias.shape), (f"{target}.to_out.0.bias",), _same))


def _module(rules: list[_Rule], source: str, target: str, module: nn.Module) -> None:
    from diffusers.models.attention_processor import Attention
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    if isinstance(module, ResnetBlock2D):
        _resblock(rules, source, target, module)
    elif isinstance(module, Attention):
        _attention(rules, source, target, module)
    elif isinstance(module, Downsample2D):  # conv Downsample: `op`
        _direct(rules, source, target, module, rename=lambda n: "op." + n.split(".", 1)[1])
    elif isinstance(module, Upsample2D):  # conv Upsample: `conv`
        _direct(rules, source, target, module)
    else:
        raise ConversionError(f"cannot convert a {type(module).__name__} at {target}")


def _walk(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(openaimodel prefix, diffusers prefix, diffusers module) in openaimodel's numbering."""
    pairs: list[tuple[str, str, nn.Module]] = [("input_blocks.0.0", "conv_in", model.conv_in)]
    n = 1
    for i, block in enumerate(model.down_blocks):
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            pairs.append((f"input_blocks.{n}.0", f"down_blocks.{i}.resnets.{j}", resnet))
            if attentions is not None and attentions[j] is not None:
                pairs.append((f"input_blocks.{n}.1", f"down_blocks.{i}.attentions.{j}", attentions[j]))
            n += 1
        for k, down in enumerate(block.downsamplers or ()):
            pairs.append((f"input_blocks.{n}.0", f"down_blocks.{i}.downsamplers.{k}", down))
            n += 1
    mid = model.mid_block
    parts = [("resnets.0", mid.resnets[0])]
    for j, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:])):
        if attn is not None:
            parts.append((f"attentions.{j}", attn))
        parts.append((f"resnets.{j + 1}", resnet))
    pairs += [(f"middle_block.{m}", f"mid_block.{name}", mod) for m, (name, mod) in enumerate(parts)]
    n = 0
    for i, block in enumerate(model.up_blocks):
        attentions = getattr(block, "attentions", None)
        last = len(block.resnets) - 1
        for j, resnet in enumerate(block.resnets):
            m = 0
            pairs.append((f"output_blocks.{n}.{m}", f"up_blocks.{i}.resnets.{j}", resnet))
            if attentions is not None and attentions[j] is not None:
                m += 1
                pairs.append((f"output_blocks.{n}.{m}", f"up_blocks.{i}.attentions.{j}", attentions[j]))
            if j == last:
                for k, up in enumerate(block.upsamplers or ()):
                    m += 1
                    pairs.append((f"output_blocks.{n}.{m}", f"up_blocks.{i}.upsamplers.{k}", up))
            n += 1
    return pairs


def _check_config(cfg: Mapping, label: str) -> None:
    """Settings that do not show in key names or shapes but must match openaimodel's fixed choices."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ConversionError(f"config for the {label} cannot host an openaimodel UNet: {what}")

    need(cfg.get("time_embedding_type", "positional") == "positional", "time_embedding_type must be 'positional'")
    need(bool(cfg.get("flip_sin_to_cos", True)), "flip_sin_to_cos must be true ([cos, sin] embedding)")
    need(cfg.get("freq_shift", 0) == 0, "freq_shift must be 0")
    need(not cfg.get("center_input_sample", False), "center_input_sample must be false")
    need(cfg.get("class_embed_type") is None and cfg.get("num_class_embeds") is None,
         "class embeddings are not supported")
    need(cfg.get("act_fn", "silu") in ("silu", "swish"), "act_fn must be silu")
    need(cfg.get("norm_num_groups", 32) == 32, "norm_num_groups must be 32 (GroupNorm32)")
    need(float(cfg.get("norm_eps", 1e-5)) == 1e-5, "norm_eps must be 1e-5")
    need(cfg.get("mid_block_scale_factor", 1) == 1, "mid_block_scale_factor must be 1")
    need(cfg.get("mid_block_type", "UNetMidBlock2D") == "UNetMidBlock2D", "mid_block_type must be UNetMidBlock2D")
    need(cfg.get("downsample_padding", 1) == 1, "downsample_padding must be 1")
    shift = cfg.get("resnet_time_scale_shift", "default")
    need(shift in ("default", "scale_shift"), "resnet_time_scale_shift must be 'default' or 'scale_shift'")
    groups = cfg.get("attn_norm_num_groups")
    need(groups == 32 or (groups is None and shift == "default"), "attn_norm_num_groups must be 32")
    down, up = list(cfg.get("down_block_types", ())), list(cfg.get("up_block_types", ()))
    need(all(t in _DOWN_TYPES for t in down), f"down_block_types must be among {_DOWN_TYPES}")
    need(all(t in _UP_TYPES for t in up), f"up_block_types must be among {_UP_TYPES}")
    need(len(down) == len(up) and all(("Attn" in d) == ("Attn" in u) for d, u in zip(down, reversed(up))),
         "attention levels of up_block_types must mirror down_block_types")


def _original_heads(original: Mapping, label: str) -> tuple[int, int, int]:
    """(num_heads, num_heads_upsample, num_head_channels) of the original's settings, -1 where unused."""
    if original.get("use_new_attention_order", False):
        raise ConversionError(f"config for the {label} cannot host this openaimodel UNet: "
                              f"use_new_attention_order=True is not supported (only the legacy attention order is)")
    head_channels = int(original.get("num_head_channels", -1))
    heads = int(original.get("num_heads", -1))
    if head_channels == -1 and heads == -1:
        raise ConversionError("the original settings give neither num_heads nor num_head_channels")
    up = int(original.get("num_heads_upsample", -1))
    return heads, (heads if up == -1 else up), head_channels


def _check_heads(model: nn.Module, original: Mapping, label: str) -> None:
    """Each attention's head count must be the original's: the weights do not show it.

    openaimodel fixes either the head count (``num_heads``, ``num_heads_upsample`` for the up path) or
    the head width (``num_head_channels``); diffusers fixes the head width (``attention_head_dim``, or
    one head per level when it is null)."""
    from diffusers.models.attention_processor import Attention

    heads, heads_up, head_channels = _original_heads(original, label)
    found = []  # (width, heads wanted, heads the config gives)
    for _, target, module in _walk(model):
        if isinstance(module, Attention):
            width = module.to_q.weight.shape[0]
            fixed = heads_up if target.startswith("up_blocks") else heads
            found.append((width, fixed if head_channels == -1 else width // head_channels, module.heads))
    if all(want == got for _, want, got in found):
        return
    head_widths = sorted({width // want for width, want, _ in found})
    if all(want == 1 for _, want, _ in found):
        fix = "set attention_head_dim to null (one head per level)"
    elif len(head_widths) == 1:
        fix = f"set attention_head_dim to {head_widths[0]}"
    else:
        widths = sorted({width for width, _, _ in found})
        raise ConversionError(
            f"config for the {label} cannot host this openaimodel UNet: with a fixed head count its attention levels "
            f"({', '.join(map(str, widths))} channels) have heads of {', '.join(map(str, head_widths))} channels, "
            f"but a diffusers UNet has one head width for all levels")
    raise ConversionError(f"config for the {label} gives other attention heads than the original: {fix}")


def _label(config: Mapping, name: str | None) -> str:
    if name is not None:
        return _KNOWN.get(name, name)

    def norm(v):
        return json.loads(json.dumps(v, default=list))

    for known, label in _KNOWN.items():
        try:
            ref = architecture(known)
        except KeyError:
            continue
        if all(norm(config.get(k)) == v for k, v in ref.items() if not k.startswith("_")):
            return label
    chans = list(config.get("block_out_channels", ()))
    return f"UNet with block_out_channels={chans}, layers_per_block={config.get('layers_per_block')}"


def _empty_model(config: Mapping, label: str) -> nn.Module:
    from diffusers import UNet2DModel

    try:
        with torch.device("meta"):
            return UNet2DModel.from_config(dict(config))
    except (ValueError, TypeError, KeyError) as err:
        raise ConversionError(f"invalid UNet2DModel config for the {label}: {err}".splitlines()[0]) from err


def _rules(model: nn.Module) -> list[_Rule]:
    rules: list[_Rule] = []
    _direct(rules, "time_embed.0", "time_embedding.linear_1", model.time_embedding.linear_1)
    _direct(rules, "time_embed.2", "time_embedding.linear_2", model.time_embedding.linear_2)
    for source, target, module in _walk(model):
        if isinstance(module, nn.Conv2d):
            _direct(rules, source, target, module)
        else:
            _module(rules, source, target, module)
    _direct(rules, "out.0", "conv_norm_out", model.conv_norm_out)
    _direct(rules, "out.2", "conv_out", model.conv_out)
    return rules


def convert_openai_unet(
    state_dict: Mapping[str, Tensor],
    config: Mapping,
    *,
    prefix: str = "",
    name: str | None = None,
    original: Mapping | None = None,
) -> dict[str, Tensor]:
    """Map an ``openaimodel`` UNet state dict to the ``UNet2DModel`` keys of ``config``, strictly.

    ``prefix``: only keys starting with it are used, with it removed (``"model.diffusion_model."``
    for CompVis Lightning checkpoints). ``name``: the architecture's name for error messages (e.g.
    ``"ffhq-256.unet"``); by default the committed architecture equal to ``config``, if any.
    ``original``: the settings the original was built with (guided-diffusion's ``create_model``
    arguments, LDM's ``unet_config.params``); its ``num_heads``, ``num_head_channels``,
    ``num_heads_upsample`` and ``use_new_attention_order`` are checked against ``config``. The weights
    do not show them: without ``original``, a config with the wrong head count converts to a
    different function. The committed architectures are right for the checkpoints they name.
    Returns tensors (same dtype; q/k/v copies, other tensors shared) in the order of
    ``UNet2DModel.from_config(config).state_dict()``; load them with ``strict=True``.
    Raises :class:`ConversionError` (one line) naming the first missing, unexpected or mis-shaped key,
    the first entry that is not an fp16, bf16 or fp32 tensor, or the attention setting that differs.
    """
    label = _label(config, name)
    model = _empty_model(config, label)
    _check_config(model.config, label)
    if original is not None:
        _check_heads(model, original, label)
    rules = _rules(model)
    expected = model.state_dict()
    filled = [t for r in rules for t in r.targets]
    if sorted(filled) != sorted(expected):  # the config has parts an openaimodel UNet has not
        odd = sorted(set(expected).symmetric_difference(filled)) or filled
        raise ConversionError(f"config for the {label} cannot host an openaimodel UNet: cannot fill {odd[0]}")

    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not sd:
        where = f" starting with {prefix!r}" if prefix else ""
        raise ConversionError(f"checkpoint does not match the {label}: no keys{where}")
    by_source = {r.source: r for r in rules}
    for r in rules:
        if r.source in sd and (problem := weight_problem(prefix + r.source, sd[r.source])):
            raise ConversionError(f"checkpoint does not match the {label}: {problem}")
    missing = [r.source for r in rules if r.source not in sd]
    unexpected = [k for k in sd if k not in by_source]
    wrong = [(k, list(v.shape), list(by_source[k].shape)) for k, v in sd.items()
             if k in by_source and list(v.shape) != list(by_source[k].shape)]
    if missing or unexpected or wrong:
        if missing:
            first = f"missing {prefix}{missing[0]}"
        elif unexpected:
            first = f"unexpected {prefix}{unexpected[0]}"
        else:
            k, got, want = wrong[0]
            first = f"shape of {prefix}{k} is {got}, expected {want}"
        total = len(missing) + len(unexpected) + len(wrong)
        more = (f" ({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped keys in all)"
                if total > 1 else "")
        raise ConversionError(f"checkpoint does not match the {label}: {first}{more}")

    out: dict[str, Tensor] = {}
    for r in rules:
        out.update(zip(r.targets, r.convert(sd[r.source])))
    return {k: out[k] for k in expected}
