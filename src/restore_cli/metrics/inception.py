"""The Inception-v3 network of FID (TensorFlow's ``inception-2015-12-05`` graph) as a plain torch module.

This is the network every FID number since Heusel et al. (2017) is computed with, in the PyTorch form that
pytorch-fid and torch-fidelity use: their weights file (``weights-inception-2015-12-05-6726825d.pth``,
the same bytes as pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``) loads into :class:`InceptionV3FID`
with ``strict=True``: 566 entries, parameter names and shapes as in torch-fidelity 0.4.0's
``FeatureExtractorInceptionV3`` (checked by ``tests/metrics/test_fid.py`` against a listing made from it).

It differs from torchvision's ``inception_v3`` where the TensorFlow graph does, as the two projects document:

* average pools in the A, C and first E blocks leave the zero padding out of the mean
  (``count_include_pad=False``);
* the last E block (``Mixed_7c``) pools with a max, not an average;
* the input is resized to 299 x 299 with TensorFlow 1.x's bilinear resize (``align_corners=False`` *without*
  half-pixel centres: source coordinate = destination coordinate x in/out; no antialiasing), then mapped
  from ``[0, 255]`` to ``[-1, 1]`` by ``(x - 128) / 128``;
* the classifier has 1008 outputs (kept so the weights file loads strictly; FID does not use it).

The features are the 2048 outputs of the final average pool.  torchvision is not needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 299
NUM_FEATURES = 2048


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    """3x3 average pool, stride 1, the padding left out of the mean (TensorFlow's SAME average pool)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg3(x))
        return torch.cat([a, b, c, d], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = {"kernel_size": (1, 7), "padding": (0, 3)}, {"kernel_size": (7, 1), "padding": (3, 0)}
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for k in range(1, 6):
            c = getattr(self, f"branch7x7dbl_{k}")(c)
        d = self.branch_pool(_avg3(x))
        return torch.cat([a, b, c, d], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = x
        for k in range(1, 5):
            b = getattr(self, f"branch7x7x3_{k}")(b)
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """``pool="avg"`` for ``Mixed_7b``; ``pool="max"`` for ``Mixed_7c`` (as in the TensorFlow graph)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        p = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _avg3(x)
        return torch.cat([a, b, c, self.branch_pool(p)], 1)


def _tf1_resize_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Linear resampling along ``dim`` as TensorFlow 1.x's ``resize_bilinear(align_corners=False)``:
    output index ``i`` reads the input at ``i * n_in / n_out`` (no half-pixel offset), clamped at the end."""
    n = x.shape[dim]
    if n == size:
        return x
    scale = torch.tensor(n / size, dtype=torch.float32)  # TensorFlow works in float32
    src = torch.arange(size, dtype=torch.float32, device=x.device) * scale.to(x.device)
    lo = src.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (src - lo.to(torch.float32)).to(x.dtype)
    shape = [1] * x.dim()
    shape[dim] = size
    w = w.view(shape)
    a, b = x.index_select(dim, lo), x.index_select(dim, hi)
    return a + (b - a) * w


def resize_tf1(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize of ``[N, C, H, W]`` to ``size x size``, TensorFlow 1.x style (see :func:`_tf1_resize_axis`)."""
    return _tf1_resize_axis(_tf1_resize_axis(x, size, 3), size, 2)  # across rows first, as TensorFlow


def to_uint8_levels(images: torch.Tensor) -> torch.Tensor:
    """Images as the 8-bit values FID is defined on: ``uint8`` is kept, floats in ``[0, 1]`` are clamped and
    rounded to ``round(255 x)`` (what saving them as PNG does), non-finite values made 0.  One channel is repeated
    to three."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"FID needs images shaped [N, 1 or 3, H, W], got {tuple(images.shape)}")
    if images.dtype != torch.uint8:  # a diverged restoration's non-finite pixels are black
        images = torch.nan_to_num(images.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images


class InceptionV3FID(nn.Module):
    """``InceptionV3FID()(images)`` -> ``[N, 2048]`` float32 pool features.

    ``images``: ``[N, 1|3, H, W]``, ``uint8`` or float in ``[0, 1]`` (quantised to 8 bits first, see
    :func:`to_uint8_levels`).  Built with random weights; load the real ones with
    ``load_state_dict(sd, strict=True)`` (:func:`restore_cli.metrics.fid.load_inception` does, after a sha256
    check).
    """

    num_features = NUM_FEATURES

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg")
        self.Mixed_7c = InceptionE(2048, "max")
        self.fc = nn.Linear(2048, 1008)  # the graph's classifier: in the weights file, unused by FID
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        """Always in evaluation mode (batch norm uses the stored statistics)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.fc.weight.dtype
        x = to_uint8_levels(images).to(self.fc.weight.device, dtype)
        x = (resize_tf1(x) - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3)).float()


def random_inception(seed: int = 0) -> InceptionV3FID:
    """The FID network with random weights that keep activations at unit scale (He-normal convolutions,
    identity batch norm): features that depend on the image, for testing offline without the real weights.
    Its FID values mean nothing."""
    net = InceptionV3FID()
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()  # running mean 0, variance 1, scale 1, shift 0
    return net
