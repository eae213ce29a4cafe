"""Latent diffusion priors: an autoencoder plus a diffusion model on its latents.

``LatentDiffusionPrior`` wraps diffusers components:

* autoencoder: ``VQModel`` (LDM-VQ, e.g. ``CompVis/ldm-celebahq-256``) or
  ``AutoencoderKL`` (Stable Diffusion); ``encode`` takes the posterior mean (KL) or
  the pre-quantisation latent (VQ), as the ReSample/PSLD code's
  ``encode_first_stage`` does, times the scaling factor; ``decode`` divides by it
  and runs the decoder (VQ decoding quantises with a straight-through gradient);
* denoiser: an unconditional ``UNet2DModel`` or a text-conditioned
  ``UNet2DConditionModel`` with prompt embeddings (from a CLIP text encoder and
  tokenizer, or any ``prompt_encoder``), optional classifier-free guidance
  ``eps = eps_null + w (eps_cond - eps_null)``; the conversion from the VP network
  to the VE denoiser is the pixel prior's (``priors/diffusion.py``).

Image sizes that are not multiples of ``f`` times the UNet's own downsampling are
padded (reflect) before encoding and cropped back after decoding; :meth:`model_shape`
records the image size it was asked for.

``LinearLatentPrior`` is the latent test oracle: an orthogonal "autoencoder"
``D(z) = Q z`` over the analytic Gaussian image prior, so the image posterior of a
linear task stays known in closed form.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..rng import noise_like
from .base import Prior, Schedule
from .diffusion import sigma_and_t, unet_x0
from .gaussian import GaussianPrior


def _unet_x0(unet, x, sigma, schedule: Schedule, prediction_type: str, cond=None, t=None):
    """The VE Tweedie estimate of a VP network (the pixel prior's conversion, variance output dropped)."""
    return unet_x0(unet, x, sigma, schedule, prediction_type, cond, t)[0]



class LatentDiffusionPrior(Prior):
    space = "latent"
    name = "latent-diffusion"

    def __init__(self, unet, autoencoder, scheduler_config: dict, scaling_factor: float | None = None,
                 prompt_encoder: Callable[[list[str]], torch.Tensor] | None = None, prompt: str = "",
                 guidance_scale: float = 1.0, name: str | None = None):
        cfg = dict(scheduler_config)
        super().__init__(Schedule.from_scheduler_config(cfg), channels=autoencoder.config.in_channels)
        self.unet = unet.eval().requires_grad_(False)
        self.ae = autoencoder.eval().requires_grad_(False)
        self.prediction_type = cfg.get("prediction_type", "epsilon")
        self.is_vq = type(autoencoder).__name__ == "VQModel"
        sf = scaling_factor if scaling_factor is not None else getattr(autoencoder.config, "scaling_factor", 1.0)
        self.scaling_factor = float(sf)
        self.factor = 2 ** (len(autoencoder.config.block_out_channels) - 1)
        # the UNet halves its input len(blocks) - 1 times: pad images to a multiple of f times that
        self.multiple = self.factor * 2 ** (len(unet.config.block_out_channels) - 1)
        self.latent_channels = int(getattr(unet.config, "in_channels"))
        self.conditional = hasattr(unet.config, "cross_attention_dim") and unet.config.cross_attention_dim is not None
        self.prompt_encoder = prompt_encoder
        self.guidance_scale = float(guidance_scale)
        self.prompt = prompt
        self.cond = self.null = None
        if self.conditional:
            if prompt_encoder is None:
                raise ValueError("a text-conditioned UNet needs a prompt encoder")
            self.set_prompt(prompt)
        self._image_hw: tuple[int, int] | None = None
        self.n_decode = self.n_encode = 0  # autoencoder passes (batch calls), for the benchmarks
        self.sample_size = None  # images of any size: latents follow the image
        if name:
            self.name = name

    # -- conditioning -------------------------------------------------------------------
    def low_memory(self, on: bool = True) -> None:
        """Gradient checkpointing in the decoder and the UNet: backpropagating through them (DPS, PSLD,
        ReSample's latent stage) then stores far fewer activations, at the cost of recomputing them."""
        for net in (self.ae, self.unet):
            if getattr(net, "_supports_gradient_checkpointing", False):  # diffusers' VQModel does not
                net.enable_gradient_checkpointing() if on else net.disable_gradient_checkpointing()

    def set_prompt(self, prompt: str) -> None:
        with torch.no_grad():
            emb = self.prompt_encoder([prompt, ""])
        self.prompt = prompt
        self.cond, self.null = emb[:1].detach(), emb[1:].detach()

    # -- shapes, encode, decode ---------------------------------------------------------
    def model_shape(self, image_shape):
        _, h, w = image_shape
        self._image_hw = (h, w)
        m = self.multiple
        return (self.latent_channels, math.ceil(h / m) * m // self.factor, math.ceil(w / m) * m // self.factor)

    def _pad(self, img):
        h, w = img.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            img = F.pad(img, (0, pw, 0, ph), mode=mode)
        return img

    def encode(self, img: torch.Tensor, gens=None) -> torch.Tensor:
        """The latent of images in ``[0, 1]``: VQ's pre-quantisation latent, KL's posterior mean, or with
        ``gens`` (one generator per image) a sample of the KL posterior, as LDM's
        ``get_first_stage_encoding`` draws it (PSLD's code)."""
        self.n_encode += 1
        self._image_hw = tuple(img.shape[-2:])
        x = self._pad(img) * 2 - 1
        p = next(self.ae.parameters())
        if self.is_vq:
            z = self.ae.encode(x.to(p.dtype)).latents
        else:
            dist = self.ae.encode(x.to(p.dtype)).latent_dist
            z = dist.mean if gens is None else dist.mean + dist.std * noise_like(dist.mean, gens)
        return z.to(img.dtype) * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.n_decode += 1
        p = next(self.ae.parameters())
        img = self.ae.decode((z / self.scaling_factor).to(p.dtype)).sample.to(z.dtype)
        img = (img + 1) / 2
        if self._image_hw is not None:
            img = img[..., : self._image_hw[0], : self._image_hw[1]]
        return img

    # -- denoiser -----------------------------------------------------------------------
    def denoise(self, x, sigma, timestep: float | None = None, **cond):
        """``E[z0 | z]``; ``timestep``: the network timestep to evaluate at instead of the one the model's own
        schedule gives ``sigma`` (DAPS's ``timestep_map="vp"``: the DAPS code's EDM ``VPPrecond`` map)."""
        self.nfe += 1
        s, t = sigma_and_t(self.schedule, sigma, x)  # no copy to the device, no wait for it
        if timestep is not None:
            t = torch.full_like(t, float(timestep))
        return self._denoise(x, s, t=t, **cond)

    def _denoise(self, x, sigma, cond=None, t=None):
        sched, pt = self.schedule, self.prediction_type
        if not self.conditional:
            return _unet_x0(self.unet, x, sigma, sched, pt, t=t)
        cond = self.cond if cond is None else cond
        cond = cond.expand(x.shape[0], -1, -1) if cond.shape[0] == 1 else cond
        if self.guidance_scale == 1.0:
            return _unet_x0(self.unet, x, sigma, sched, pt, cond, t)
        both = torch.cat([self.null.expand(x.shape[0], -1, -1), cond])
        x0 = _unet_x0(self.unet, torch.cat([x, x]), torch.cat([sigma, sigma]), sched, pt, both,
                      None if t is None else torch.cat([t, t]))
        x0_null, x0_cond = x0.chunk(2)
        return x0_null + self.guidance_scale * (x0_cond - x0_null)  # linear in eps, so also in x0

    def info(self):
        return {**super().info(), "autoencoder": "VQ" if self.is_vq else "KL", "factor": self.factor,
                "scaling_factor": self.scaling_factor, "prediction_type": self.prediction_type,
                "conditional": self.conditional, "prompt": self.prompt if self.conditional else None,
                "guidance_scale": self.guidance_scale if self.conditional else None}

    @classmethod
    def from_pretrained(cls, root: str, components: dict, scaling_factor: float | None = None,
                        prompt: str = "", guidance_scale: float = 1.0, name: str | None = None):
        """Load from a local snapshot or Hub repo laid out in diffusers components."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel, VQModel

        sub = lambda k: components.get(k) or None  # noqa: E731
        sched = DDPMScheduler.load_config(root, subfolder=sub("scheduler"))
        if "vqvae" in components:
            ae = VQModel.from_pretrained(root, subfolder=sub("vqvae"))
        else:
            ae = AutoencoderKL.from_pretrained(root, subfolder=sub("vae"))
        if "text_encoder" in components:
            from transformers import CLIPTextModel, CLIPTokenizer

            tok = CLIPTokenizer.from_pretrained(root, subfolder=sub("tokenizer"))
            te = CLIPTextModel.from_pretrained(root, subfolder=sub("text_encoder")).eval().requires_grad_(False)

            def encode_text(texts: list[str]) -> torch.Tensor:
                ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                          return_tensors="pt").input_ids.to(te.device)
                return te(ids)[0]

            unet = UNet2DConditionModel.from_pretrained(root, subfolder=sub("unet"))
            prior = cls(unet, ae, sched, scaling_factor, encode_text, prompt, guidance_scale, name)
            prior.text_encoder = te  # registered, so .to(device) moves it too
            return prior
        if "class_prompts" in components:
            encoder = ClassPromptEncoder.from_folder(Path(root) / components["class_prompts"])
            unet = UNet2DConditionModel.from_pretrained(root, subfolder=sub("unet"))
            prior = cls(unet, ae, sched, scaling_factor, encoder, prompt, guidance_scale, name)
            prior.class_prompts = encoder  # registered, so .to(device) moves its table
            return prior
        unet = UNet2DModel.from_pretrained(root, subfolder=sub("unet"))
        return cls(unet, ae, sched, scaling_factor, None, prompt, guidance_scale, name)


class ClassPromptEncoder(torch.nn.Module):
    """Prompt embeddings of a class-conditioned model: a learned token sequence per class name
    and a null sequence (the bundled Fashion-MNIST latent model; ``training/train_priors.py``).

    A prompt selects the class whose name it contains as whole words (case-insensitive; a name
    with "/" has aliases, "t-shirt/top" answers to "t-shirt" and "top"; plurals count; the longest match wins:
    "a photo of an ankle boot" -> "ankle boot", "a t-shirt" -> "t-shirt/top", not "shirt"); the
    empty prompt is the null embedding
    (unconditional).  Any other prompt is an error that lists the class names.  The result is
    shaped like a text encoder's ``[B, tokens, dim]``, so classifier-free guidance and P2L's
    prompt tuning act on it as on CLIP embeddings.
    """

    def __init__(self, table: torch.Tensor, null: torch.Tensor, classes: list[str]):
        super().__init__()
        if table.shape[0] != len(classes):
            raise ValueError(f"{table.shape[0]} class embeddings for {len(classes)} class names")
        self.register_buffer("table", table)
        self.register_buffer("null", null)
        self.classes = list(classes)

    @classmethod
    def from_folder(cls, folder: Path) -> "ClassPromptEncoder":
        import json

        from safetensors.torch import load_file

        t = load_file(str(Path(folder) / "embeddings.safetensors"))
        classes = json.loads((Path(folder) / "classes.json").read_text())["classes"]
        return cls(t["embeddings"], t["null"], classes)

    def index(self, prompt: str) -> int | None:
        import re

        text = prompt.strip().lower()
        if not text:
            return None
        hits = []  # (length of the matched alias, class index)
        for i, c in enumerate(self.classes):
            for alias in c.lower().split("/"):
                if re.search(rf"(?<![\w-]){re.escape(alias.strip())}(?:e?s)?(?![\w-])", text):
                    hits.append((len(alias), i))
        if not hits:
            raise ValueError(f"prompt {prompt!r} names none of the model's classes: {', '.join(self.classes)}")
        return max(hits)[1]

    def forward(self, prompts: list[str]) -> torch.Tensor:
        rows = [self.null if (i := self.index(p)) is None else self.table[i] for p in prompts]
        return torch.stack(rows)


class LinearLatentPrior(Prior):
    """Oracle: latents ``z`` with ``x = Q z`` (``Q`` orthogonal, fixed by a seed) over a Gaussian image prior.

    With isotropic noise ``Q (z0 + sigma n) = x0 + sigma Q n``, so the latent denoiser is exactly
    ``E[z0 | z] = Q^T E[x0 | Q z]`` and the image posterior of a linear task is the Gaussian prior's.
    The latent has ``f^2 C`` channels at ``1/f`` of the image size (a space-to-depth layout).
    """

    space = "latent"
    name = "linear-latent"

    def __init__(self, image_prior: GaussianPrior, image_shape, factor: int = 2, seed: int = 0):
        super().__init__(image_prior.schedule, image_prior.channels)
        self.image_prior = image_prior
        c, h, w = image_shape
        if h % factor or w % factor:
            raise ValueError("the oracle needs image sides divisible by the factor")
        self.image_shape, self.factor = (c, h, w), factor
        n = c * h * w
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))
        self.register_buffer("q", q)

    def model_shape(self, image_shape):
        c, h, w = image_shape
        return (c * self.factor**2, h // self.factor, w // self.factor)

    def _to_x(self, z):  # model-space image [-1, 1]
        return (z.reshape(z.shape[0], -1).to(self.q.dtype) @ self.q.T).reshape(z.shape[0], *self.image_shape).to(z.dtype)

    def _to_z(self, x):
        zs = self.model_shape(self.image_shape)
        return (x.reshape(x.shape[0], -1).to(self.q.dtype) @ self.q).reshape(x.shape[0], *zs).to(x.dtype)

    def _denoise(self, z, sigma):
        return self._to_z(self.image_prior._denoise(self._to_x(z), sigma))

    def decode(self, z):
        return (self._to_x(z) + 1) / 2

    def encode(self, img, gens=None):
        return self._to_z(img * 2 - 1)

    def sample(self, gens):
        return self._to_z(self.image_prior.sample(self.image_shape, gens))
