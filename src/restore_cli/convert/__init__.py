"""Converting the papers' original checkpoints to diffusers models, once, into the cache.

* ``unet``: OpenAI's ADM UNet (guided-diffusion; DPS's FFHQ and the ImageNet 256 model) and
  CompVis's LDM UNet (``openaimodel.UNetModel``) -> diffusers ``UNet2DModel``;
* ``vq``: CompVis's VQ first stage (LDM-VQ-4) -> diffusers ``VQModel``;
* ``checkpoint``: reading a ``.pt``/``.ckpt`` file safely and writing a converted folder.

The exact architectures are committed as diffusers configs in ``data/architectures/``.
"""

from __future__ import annotations

import json
from importlib import resources


class ConversionError(ValueError):
    """A checkpoint that is not the architecture it should be (one line: what was expected, what was found)."""


def architecture(name: str) -> dict:
    """The committed diffusers config ``data/architectures/<name>.json`` (e.g. ``ffhq-256.unet``)."""
    path = resources.files("restore_cli").joinpath(f"data/architectures/{name}.json")
    if not path.is_file():
        raise KeyError(f"no architecture config {name!r}")
    return json.loads(path.read_text())
