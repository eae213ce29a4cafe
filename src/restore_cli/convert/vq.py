"""CompVis's LDM VQ first stage (the VQ-f4 autoencoder of LDM-VQ-4 FFHQ) -> diffusers ``VQModel``.

The latent-diffusion checkpoint (``model.ckpt``) stores its autoencoder under ``first_stage_model.``;
the standalone first-stage checkpoint stores the same weights bare (use ``prefix=""``). The
architecture (``configs/latent-diffusion/ffhq-ldm-vq-4.yaml``: ``embed_dim 3, n_embed 8192,
ch 128, ch_mult [1, 2, 4], num_res_blocks 2, attn_resolutions [], z_channels 3``) is committed as
the diffusers config ``data/architectures/ldm-ffhq-256.vqvae.json``.

What maps to what (LDM name -> diffusers name, ``n`` = number of resolution levels):

* ``{encoder,decoder}.conv_in / conv_out`` -> same names; ``norm_out`` -> ``conv_norm_out``;
* ``encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2}`` -> ``encoder.down_blocks.{i}.resnets.{j}.*``,
  ``nin_shortcut`` (the 1x1 conv when the channel count changes) -> ``conv_shortcut``;
  ``encoder.down.{i}.downsample.conv`` -> ``encoder.down_blocks.{i}.downsamplers.0.conv``
  (both pad right/bottom by one, then a stride-2 3x3 conv);
* ``decoder.up.{i}`` -> ``decoder.up_blocks.{n-1-i}``: LDM builds the decoder's levels in reverse
  and *prepends* each one, so ``up[n-1]`` (lowest resolution, widest) runs first, while diffusers
  lists its up blocks in execution order. Each level has ``num_res_blocks + 1`` resnets;
  ``upsample.conv`` -> ``upsamplers.0.conv`` (nearest x2, then a 3x3 conv, in both);
* ``mid.block_1 / block_2`` -> ``mid_block.resnets.0 / 1``; ``mid.attn_1.{norm,q,k,v,proj_out}`` ->
  ``mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}``. LDM's attention projections
  are 1x1 convs (``[C, C, 1, 1]``); diffusers' are ``nn.Linear`` (``[C, C]``), so those weights are
  reshaped. The mid attention exists even with ``attn_resolutions: []`` (hence
  ``mid_block_add_attention: true``); it is single-head with scale ``C**-0.5`` in both;
* ``quant_conv``, ``post_quant_conv``, ``quantize.embedding.weight`` -> same names.

Semantics the config must keep: diffusers' ``VQModel.encode`` returns ``quant_conv(encoder(x))``,
the pre-quantisation latent, exactly like LDM's ``VQModelInterface.encode``; ``VQModel.decode(h)``
snaps ``h`` to the nearest codebook row (argmin of Euclidean distance) before ``post_quant_conv`` and
the decoder, as LDM's ``decode`` does, unless ``force_not_quantize=True``. LDM does not scale its VQ
latents (``scale_factor`` 1.0), so the config sets ``scaling_factor: 1.0`` rather than diffusers'
default 0.18215 (the model itself never applies it; callers that do must get 1). The quantiser's
``beta``/``legacy`` only affect the training loss and play no part here.

Ignored: a Lightning checkpoint of the autoencoder carries its training loss module under
``loss.`` (the patch-GAN discriminator, the frozen LPIPS net, ...); those keys are skipped. Keys
outside ``prefix`` (the diffusion UNet, the EMA copy, schedule buffers) are not looked at. Anything
else is strict: every key of the diffusers model must come from the checkpoint with the right
shape, and no other key under ``prefix`` may be left over, or :class:`ConversionError` says (one
line) which key is the first to disagree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from restore_cli.convert import ConversionError, weight_problem

__all__ = ["convert_ldm_vq"]

_WHAT = "checkpoint does not match the LDM VQ-f4 autoencoder"

#: the training-only loss module of a first-stage Lightning checkpoint (discriminator, LPIPS)
_IGNORED = ("loss.",)

_RESNET = {
    "norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut",
}  # fmt: skip
_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(leaf: str) -> str:
    layer, _, param = leaf.rpartition(".")
    return f"{_RESNET[layer]}.{param}"


def _ldm_name(key: str, n_levels: int) -> str:
    """The LDM name (without prefix) of the diffusers ``VQModel`` parameter ``key``."""
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return key  # quant_conv, post_quant_conv, quantize.embedding.weight
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"{part}.down.{m[1]}.block.{m[2]}.{_resnet(m[3])}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.(.+)", rest):
        return f"{part}.down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"{part}.up.{n_levels - 1 - int(m[1])}.block.{m[2]}.{_resnet(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
        return f"{part}.up.{n_levels - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        return f"{part}.mid.block_{int(m[1]) + 1}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest):
        return f"{part}.mid.attn_1.{_ATTN[m[1]]}.{m[2]}"
    if m := re.fullmatch(r"conv_norm_out\.(.+)", rest):
        return f"{part}.norm_out.{m[1]}"
    if re.fullmatch(r"conv_(in|out)\.(weight|bias)", rest):
        return key
    raise AssertionError(f"diffusers VQModel parameter {key!r} has no LDM counterpart")  # pragma: no cover


def _expected_shapes(config: dict) -> dict[str, torch.Size]:
    """Parameter name -> shape of ``VQModel.from_config(config)``, built on the meta device (no memory)."""
    from diffusers import VQModel

    with torch.device("meta"):
        model = VQModel.from_config(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def _shape(s) -> str:
    return "[" + ", ".join(str(d) for d in s) + "]"


def convert_ldm_vq(
    state_dict: Mapping[str, Tensor], config: dict, prefix: str = "first_stage_model."
) -> dict[str, Tensor]:
    """Map an LDM VQ autoencoder's weights to diffusers ``VQModel`` keys for ``config``.

    ``state_dict``: the Lightning checkpoint's ``state_dict`` (keys ``first_stage_model.*``; the rest
    is not looked at), or with ``prefix=""`` a bare first-stage state dict (its ``loss.*`` keys are
    ignored). Returns a state dict that ``VQModel.from_config(config).load_state_dict(...,
    strict=True)`` accepts; tensors keep their dtype (the 1x1 attention convs are reshaped to
    Linear weights). Raises :class:`ConversionError` (one line) naming the first unexpected key,
    missing key or shape mismatch.
    """
    expected = _expected_shapes(config)
    n_levels = len(config["block_out_channels"])
    ldm_to_diffusers = {_ldm_name(k, n_levels): k for k in expected}

    ours = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not ours:
        hint = " (a bare first-stage state dict needs prefix='')" if prefix else ""
        raise ConversionError(f"{_WHAT}: no keys start with {prefix!r}{hint}")
    ours = {k: v for k, v in ours.items() if not k.startswith(_IGNORED)}

    unexpected = [k for k in ours if k not in ldm_to_diffusers]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ConversionError(f"{_WHAT}: unexpected key {prefix + unexpected[0]!r}{more}")
    missing = [k for k in ldm_to_diffusers if k not in ours]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConversionError(f"{_WHAT}: missing key {prefix + missing[0]!r}{more}")

    out: dict[str, Tensor] = {}
    for ldm_key, key in ldm_to_diffusers.items():
        tensor = ours[ldm_key]
        if problem := weight_problem(prefix + ldm_key, tensor):
            raise ConversionError(f"{_WHAT}: {problem}")
        want = expected[key]
        if len(want) == 2 and tensor.ndim == 4 and tuple(tensor.shape[2:]) == (1, 1):
            tensor = tensor.reshape(tensor.shape[:2])  # 1x1 conv -> nn.Linear
        if tensor.shape != want:
            raise ConversionError(
                f"{_WHAT}: {prefix + ldm_key!r} has shape {_shape(ours[ldm_key].shape)}, "
                f"expected {_shape(want)} (for diffusers {key!r})"
            )
        out[key] = tensor
    return out
