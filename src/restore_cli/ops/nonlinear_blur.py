"""The non-linear blur of DPS / DAPS / DiffStateGrad (Table 4): a network that blurs an image given a
random kernel code.

The network is the ``KernelWizard`` of Tran et al. 2021, "Explore Image Deblurring via Encoded Blur
Kernel Space" (BKSE, github.com/VinAIResearch/blur-kernel-space-exploring), with the published
``GOPRO_wVAE.pth`` weights and the options DPS uses with them
(``bkse/options/generate_blur/default.yml``: 3 channels, ``nf`` 64, 10 front and 20 back residual
blocks, kernel codes of 512 channels, VAE kernel extractor with 4 ResNet blocks, no normalisation).
Written here from that architecture: the parameter names are the checkpoint's, so it loads with
strict key checking.

* ``A(x) = clamp(G(x, k), 0, 1)`` on our ``[0, 1]`` images, where ``G`` is the wizard's
  ``adaptKernel`` (features of the sharp image -> U-Net whose innermost layer is concatenated with
  the kernel code ``k`` -> reconstruction trunk, + the input image).  DPS's
  ``NonlinearBlurOperator`` maps its ``[-1, 1]`` data to ``[0, 1]`` before the network and takes
  ``clamp(2 G - 1, -1, 1)`` after, which is the same map in ``[-1, 1]`` units, so a residual there is
  twice ours: ``residual_scale = 2`` (and ``--noise-sigma`` is in ``[-1, 1]`` units, as for every blur).
* The kernel code: DPS draws ``torch.randn(1, 512, 2, 2) * 1.2`` for its 256 x 256 images, afresh at
  every call of the operator (so the code changes between the measurement and every guidance step);
  DAPS draws one from ``np.random.seed(0)`` and keeps it for every image.  Here each image draws one
  code ``randn(512, H'/128, W'/128) * 1.2`` from its own generator when the operator is built, and
  keeps it for the whole run: a fixed forward model per image, and independent of the batch.
* Sizes: the network downsamples by 128 (4 in the feature extractor, 32 in the U-Net), so images are
  padded (replicate) to multiples of 128 before the network and cropped back after.  256 x 256 needs
  no padding and gets the papers' 2 x 2 codes; a 32 x 32 image is blurred inside a 128 x 128 frame
  with a 1 x 1 code.
* Channels: the published network is RGB.  A grey image is fed as three equal channels and the
  result is the mean of the three output channels.
* The kernel extractor ``F`` (blurred + sharp image -> code) is not part of the forward model: its
  weights are checked against the architecture (names and shapes) and then dropped, which saves its
  75 M parameters.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..rng import Generators, randn
from .base import DEFAULT_SIGMA_Y, Operator

CODE_SCALE = 1.2  # DPS: torch.randn(1, 512, 2, 2) * 1.2
DOWNSAMPLING = 128  # 2 stride-2 convolutions in the feature extractor, 5 in the adapter's U-Net
RECON_CHANNELS = 64  # BKSE's reconstruction trunk hard-codes 64 channels after the first pixel shuffle
# sha256 of the published GOPRO_wVAE.pth: not known to us (its Google Drive copy could not be read from where
# restore is developed).  When set, a file with another sha256 is refused; every run records the one it used.
KNOWN_SHA256: str | None = None
CHECKPOINT_NAME = "GOPRO_wVAE.pth"
CHECKPOINT_URL = "https://drive.google.com/file/d/1vRoDpIsrTRYZKsOMPNbPcMtFDpCT6Foy/view"  # BKSE README, Model Zoo


class KernelModelError(ValueError):
    """A --kernel-model file that is unreadable or not the BKSE architecture (one line naming the file)."""


@dataclass(frozen=True)
class KernelWizardConfig:
    """BKSE's ``KernelWizard`` options (``options/generate_blur/default.yml``)."""

    input_nc: int = 3
    nf: int = 64
    front_RBs: int = 10  # noqa: N815 - BKSE's option names
    back_RBs: int = 20  # noqa: N815
    kernel_dim: int = 512  # the code's channels; the adapter's innermost layer has 8 * nf, so they must agree
    use_vae: bool = True
    use_sharp: bool = True
    extractor_blocks: int = 4  # KernelExtractor.n_blocks

    def __post_init__(self):
        if self.kernel_dim != 8 * self.nf:
            raise ValueError(f"kernel_dim must be 8 * nf (the adapter's innermost width), got {self.kernel_dim} "
                             f"and nf = {self.nf}")


GOPRO_WVAE = KernelWizardConfig()
# the architecture --kernel-model files are loaded as (tests swap in a small one)
CHECKPOINT_CONFIG = GOPRO_WVAE


class ResidualBlockNoBN(nn.Module):
    """``x + conv2(relu(conv1(x)))`` (BKSE's ``ResidualBlock_noBN``)."""

    def __init__(self, nf: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class UnetBlock(nn.Module):
    """One level of BKSE's ``UnetSkipConnectionBlock`` with ``norm: none`` (no norm layers, so no
    bias in the convolutions but the outermost transposed one).

    The original's down path starts with an in-place LeakyReLU(0.2), which also rewrites the tensor
    that its skip connection then concatenates: the skip carries ``leaky_relu(x)``, not ``x``.  That
    is reproduced here without the in-place operation.  The innermost level concatenates the kernel
    code to its downsampled features.
    """

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None, submodule: "UnetBlock | None" = None,
                 outermost: bool = False, innermost: bool = False):
        super().__init__()
        self.outermost, self.innermost = outermost, innermost
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=False)
        if outermost:
            self.down = nn.Sequential(downconv)
            self.submodule = submodule
            self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1), nn.Tanh())
        else:
            self.down = nn.Sequential(nn.LeakyReLU(0.2), downconv)
            if not innermost:
                self.submodule = submodule
            self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=False))

    def forward(self, x, code):
        if self.outermost:
            return self.up(self.submodule(self.down(x), code))
        h = self.down[0](x)  # the original's in-place LeakyReLU: the skip sees it too
        d = self.down[1](h)
        inner = torch.cat((d, code), dim=1) if self.innermost else self.submodule(d, code)
        return torch.cat((self.up(inner), h), dim=1)


class KernelAdapter(nn.Module):
    """BKSE's ``KernelAdapter`` (the function G): a 5-level U-Net on the image features, the code at its bottom."""

    def __init__(self, nf: int):
        super().__init__()
        block = UnetBlock(nf * 8, nf * 8, innermost=True)
        block = UnetBlock(nf * 4, nf * 8, submodule=block)
        block = UnetBlock(nf * 2, nf * 4, submodule=block)
        block = UnetBlock(nf, nf * 2, submodule=block)
        self.model = UnetBlock(nf, nf, input_nc=nf, submodule=block, outermost=True)

    def forward(self, x, code):
        return self.model(x, code)


class KernelWizard(nn.Module):
    """The part of BKSE's ``KernelWizard`` that blurs: ``feature_extractor``, ``adapter``, ``recon_trunk``
    (``adaptKernel``).  The kernel extractor's weights are checked by :func:`load_kernel_wizard`, not kept."""

    def __init__(self, config: KernelWizardConfig = GOPRO_WVAE):
        super().__init__()
        self.config = config
        nf, c = config.nf, config.input_nc
        lrelu = nn.LeakyReLU(0.1)
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(c, nf, 3, 1, 1), lrelu, nn.Conv2d(nf, nf, 3, 2, 1), lrelu, nn.Conv2d(nf, nf, 3, 2, 1), lrelu,
            *[ResidualBlockNoBN(nf) for _ in range(config.front_RBs)])
        self.adapter = KernelAdapter(nf)
        r = RECON_CHANNELS
        self.recon_trunk = nn.Sequential(
            *[ResidualBlockNoBN(nf) for _ in range(config.back_RBs)],
            nn.Conv2d(nf, nf * 4, 3, 1, 1), nn.PixelShuffle(2), lrelu,
            nn.Conv2d(nf, r * 4, 3, 1, 1), nn.PixelShuffle(2), lrelu,
            nn.Conv2d(r, r, 3, 1, 1), lrelu, nn.Conv2d(r, c, 3, 1, 1))

    def adapt_kernel(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """BKSE's ``adaptKernel``: ``x`` in ``[0, 1]``, [B, C, H, W] with H, W multiples of 128;
        ``code`` [B, 8 nf, H / 128, W / 128]."""
        out = self.recon_trunk(self.adapter(self.feature_extractor(x), code))
        return out + x


def extractor_shapes(config: KernelWizardConfig) -> dict[str, tuple[int, ...]]:
    """The names and shapes of BKSE's ``KernelExtractor`` weights (function F) in a KernelWizard state dict.

    Its ``model`` is ReflectionPad(3), Conv 7x7, [norm], ReLU; 5 x (Conv 3x3 stride 2, [norm], ReLU) with
    widths ``min(nf * 2^i, out)``; then ResNet blocks of ReflectionPad, Conv, [norm], ReLU, ReflectionPad,
    Conv, [norm] (``norm: none``: no norm weights and no conv biases)."""
    c = config
    in_nc = c.nf * 2 if c.use_sharp else c.nf
    out_nc = c.kernel_dim * 2 if c.use_vae else c.kernel_dim
    shapes = {"kernel_extractor.model.1.weight": (c.nf, in_nc, 7, 7)}
    for i in range(5):
        inc, ouc = min(c.nf * 2 ** i, out_nc), min(c.nf * 2 ** (i + 1), out_nc)
        shapes[f"kernel_extractor.model.{4 + 3 * i}.weight"] = (ouc, inc, 3, 3)
    for j in range(c.extractor_blocks):
        for k in (1, 5):
            shapes[f"kernel_extractor.model.{19 + j}.conv_block.{k}.weight"] = (out_nc, out_nc, 3, 3)
    return shapes


def _strip_prefix(sd: dict) -> dict:
    """A checkpoint saved from ``nn.DataParallel`` prefixes every name with ``module.``: removed."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _describe(names, limit: int = 3) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def kernel_wizard_from_state_dict(sd: dict, config: KernelWizardConfig = GOPRO_WVAE, name: str = "checkpoint") -> KernelWizard:
    """A :class:`KernelWizard` with the weights of a full BKSE KernelWizard state dict, keys checked exactly.

    The ``kernel_extractor.*`` weights must be exactly :func:`extractor_shapes` (then they are dropped);
    every other name must be one of ours with our shape, and all of ours must be there.  Any difference
    is a :class:`KernelModelError` naming the file and the first names that differ."""
    sd = _strip_prefix(dict(sd))
    want_ext = extractor_shapes(config)
    ext = {k: v for k, v in sd.items() if k.startswith("kernel_extractor.")}
    with torch.device("meta"):  # names and shapes only: nothing allocated before the file is found right
        ours = KernelWizard(config).state_dict()
    rest = {k: v for k, v in sd.items() if not k.startswith("kernel_extractor.")}
    missing = (set(ours) - set(rest)) | (set(want_ext) - set(ext))
    unexpected = (set(rest) - set(ours)) | (set(ext) - set(want_ext))
    if missing or unexpected:
        parts = ([f"missing {_describe(missing)}"] if missing else []) + \
                ([f"unexpected {_describe(unexpected)}"] if unexpected else [])
        raise KernelModelError(f"{name}: not BKSE's KernelWizard (GOPRO_wVAE options): {'; '.join(parts)}")
    shapes = {**{k: tuple(v.shape) for k, v in ours.items()}, **want_ext}
    wrong = [k for k, v in sd.items() if tuple(v.shape) != shapes[k]]
    if wrong:
        k = sorted(wrong)[0]
        raise KernelModelError(f"{name}: not BKSE's KernelWizard (GOPRO_wVAE options): {k} has shape "
                               f"{list(sd[k].shape)}, expected {list(shapes[k])}"
                               + (f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""))
    if not all(torch.is_floating_point(v) and bool(torch.isfinite(v).all()) for v in rest.values()):
        raise KernelModelError(f"{name}: non-finite or non-float weights")
    net = KernelWizard(config)
    net.load_state_dict(rest, strict=True)
    return net.eval().requires_grad_(False)


_CACHE: dict[tuple, tuple[KernelWizard, str]] = {}


def load_kernel_wizard(path: Path, config: KernelWizardConfig | None = None) -> tuple[KernelWizard, str]:
    """``(network, sha256)`` of a ``GOPRO_wVAE.pth``-style file, read as inert data (``convert.checkpoint``:
    torch's tensor rebuilders only, nothing imported or called).

    The last file loaded is kept (by path, size and modification time), so the operator of each batch
    reuses it.  Raises :class:`KernelModelError` (one line naming the file)."""
    from ..convert import ConversionError
    from ..convert.checkpoint import load_state_dict, sha256_file

    config = config or CHECKPOINT_CONFIG
    path = Path(path)
    try:
        st = os.stat(path)
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, config)
        if key in _CACHE:
            return _CACHE[key]
        digest = sha256_file(path)
    except OSError as e:
        raise KernelModelError(f"--kernel-model {path}: {e.strerror or e}") from None
    if KNOWN_SHA256 is not None and digest != KNOWN_SHA256:
        raise KernelModelError(f"--kernel-model {path}: sha256 {digest} is not that of {CHECKPOINT_NAME} "
                               f"({KNOWN_SHA256})")
    try:
        sd = load_state_dict(path)
    except ConversionError as e:
        raise KernelModelError(f"--kernel-model {path}: {str(e).split(': ', 1)[-1]}") from None
    net = kernel_wizard_from_state_dict(sd, config, name=f"--kernel-model {path}")
    _CACHE.clear()
    _CACHE[key] = (net, digest)
    return net, digest


class NonlinearBlur(Operator):
    """``A(x) = clamp(KernelWizard.adaptKernel(x, k_i), 0, 1)`` with one kernel code ``k_i`` per image.

    ``codes`` [B, 8 nf, H' / 128, W' / 128] (``H'``, ``W'``: the sides padded up to multiples of 128), or
    drawn from ``gens`` as ``randn * 1.2``.  Not linear; differentiable through the (frozen) network."""

    name = "deblur"
    kind = "nonlinear"
    linear = False
    residual_scale = 2.0  # DPS: [-1, 1] -> [0, 1] -> network -> clamp(2 b - 1, -1, 1)

    def __init__(self, net: KernelWizard, in_shape, gens: Generators | None = None, sigma_y: float = DEFAULT_SIGMA_Y,
                 codes: torch.Tensor | None = None, checkpoint: str | None = None, sha256: str | None = None):
        super().__init__(in_shape, sigma_y)
        c, h, w = self.in_shape
        cfg = net.config
        if c not in (1, cfg.input_nc):
            raise ValueError(f"the non-linear blur network takes {cfg.input_nc}-channel images"
                             f"{' (or grey)' if cfg.input_nc == 3 else ''}; got {c} channels")
        self.padded = (math.ceil(h / DOWNSAMPLING) * DOWNSAMPLING, math.ceil(w / DOWNSAMPLING) * DOWNSAMPLING)
        code_shape = (cfg.kernel_dim, self.padded[0] // DOWNSAMPLING, self.padded[1] // DOWNSAMPLING)
        if codes is None:
            if gens is None:
                raise ValueError("kernel codes are drawn from one generator per image")
            codes = randn(code_shape, gens) * CODE_SCALE
        if tuple(codes.shape[1:]) != code_shape:
            raise ValueError(f"kernel codes must be [B, {', '.join(map(str, code_shape))}], got {list(codes.shape)}")
        self.net = net
        self.register_buffer("codes", codes)
        self.checkpoint, self.sha256 = checkpoint, sha256

    def A(self, x):  # noqa: N802
        _, h, w = self.in_shape
        ph, pw = self.padded
        dtype = next(self.net.parameters()).dtype
        z = x.to(dtype)
        grey = z.shape[1] == 1 and self.net.config.input_nc != 1
        if grey:
            z = z.expand(-1, self.net.config.input_nc, -1, -1)
        if (ph, pw) != (h, w):
            z = F.pad(z, (0, pw - w, 0, ph - h), mode="replicate")
        codes = self.codes.to(dtype)
        if codes.shape[0] == 1 and z.shape[0] > 1:
            codes = codes.expand(z.shape[0], -1, -1, -1)
        b = self.net.adapt_kernel(z, codes)[..., :h, :w]
        if grey:
            b = b.mean(1, keepdim=True)
        return b.clamp(0, 1).to(x.dtype)

    def params(self):
        return {**super().params(), "kernel": "nonlinear", "kernel_model": self.checkpoint,
                "kernel_model_sha256": self.sha256, "code_shape": list(self.codes.shape[1:]),
                "code_scale": CODE_SCALE, "padded_size": list(self.padded)}

    def select(self, idx):
        codes = self.codes if self.codes.shape[0] == 1 else self.codes[idx]
        return NonlinearBlur(self.net, self.in_shape, sigma_y=self.sigma_y, codes=codes,
                             checkpoint=self.checkpoint, sha256=self.sha256)


def load_nonlinear_blur(path: Path, in_shape, gens: Generators, sigma_y: float = DEFAULT_SIGMA_Y) -> NonlinearBlur:
    """The operator for a batch, with the network of ``path`` (see :func:`load_kernel_wizard`)."""
    net, digest = load_kernel_wizard(Path(path))
    return NonlinearBlur(net, in_shape, gens, sigma_y, checkpoint=str(Path(path).resolve()), sha256=digest)
