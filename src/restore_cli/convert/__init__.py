"""Converting the papers' original checkpoints to diffusers models, once, into the cache.

* ``unet``: OpenAI's ADM UNet (guided-diffusion; DPS's FFHQ and the ImageNet 256 model) and
  CompVis's LDM UNet (``openaimodel.UNetModel``) -> diffusers ``UNet2DModel``;
* ``vq``: CompVis's VQ first stage (LDM-VQ-4) -> diffusers ``VQModel``;
* ``checkpoint``: reading a ``.pt``/``.ckpt`` file safely and writing a converted folder.

The exact architectures are committed as diffusers configs in ``data/architectures/``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from importlib import resources


class ConversionError(ValueError):
    """A checkpoint that is not the architecture it should be (one line: what was expected, what was found)."""


#: the dtypes converted weights may have (kept as they are)
WEIGHT_DTYPES = ("float16", "bfloat16", "float32")

#: plain words for what a non-tensor entry of a state dict is (by exact type; anything else is "an object")
_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string", bytes: "bytes",
          type(None): "empty (None)", dict: "a dictionary", OrderedDict: "a dictionary", list: "a list",
          tuple: "a list"}


def weight_problem(key: str, value) -> str | None:
    """What is wrong with ``value`` as the weight ``key`` (one line), or None for an fp16/bf16/fp32 tensor."""
    import torch

    if not isinstance(value, torch.Tensor):
        kind = _KINDS.get(type(value), "an object")
        return f"{key} is {kind}, not a tensor"
    dtype = str(value.dtype).removeprefix("torch.")
    if dtype not in WEIGHT_DTYPES:
        return f"{key} holds {dtype} values, not fp16, bf16 or fp32 weights"
    return None


def architecture(name: str) -> dict:
    """The committed diffusers config ``data/architectures/<name>.json`` (e.g. ``ffhq-256.unet``)."""
    path = resources.files("restore_cli").joinpath(f"data/architectures/{name}.json")
    if not path.is_file():
        raise KeyError(f"no architecture config {name!r}")
    return json.loads(path.read_text())
