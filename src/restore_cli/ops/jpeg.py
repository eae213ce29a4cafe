"""JPEG compression as a forward model: ``y = decode(encode(x))``, differentiable.

The pipeline is baseline JPEG as libjpeg-turbo (hence Pillow; and IJG libjpeg 6b: IJG 7+ upsamples
chroma by DCT scaling instead) runs it, on images in
``[0, 1]`` scaled to 8-bit units (``255 x``):

1. colour: RGB -> YCbCr with the JFIF (ITU-R BT.601 full-range) matrix, Cb/Cr offset by 128; a grey
   image is its own luma (one component, as libjpeg writes an ``L`` image);
2. padding to whole MCUs by edge replication (libjpeg's ``expand_right_edge`` and bottom-row
   copies): 8x8 for a grey image or 4:4:4, 16x16 for 4:2:0, 8 high and 16 wide for 4:2:2; a
   subsampled chroma plane is padded at the bottom as libjpeg's ``jcprepct.c`` does (the image's rows to
   an even count, then the last downsampled row repeated);
3. chroma subsampling (default 4:2:0, PiGDM App. B's "2 x 2 chroma subsampling"): the mean of each
   2x2 (4:2:0) or 1x2 (4:2:2) block, libjpeg's ``h2v2_downsample``/``h2v1_downsample``;
4. per 8x8 block, level shift by -128 and the 2-D DCT-II (JPEG's FDCT is the orthonormal one);
5. quantisation ``round(F / Q)`` by the luma table (Y) or the chroma table (Cb, Cr), then
   dequantisation ``Q * round(F / Q)``;
6. IDCT, +128, range-limited to 0..255 (``jidctint.c``); chroma upsampled with libjpeg's default "fancy" (triangle) filter
   (``h2v2_fancy_upsample``: weights 3/4, 1/4 per axis from the nearer and farther chroma sample,
   edges replicated) on the component's real ``ceil(H / 2) x ceil(W / 2)`` samples, or by
   replication (``upsampling="box"``); crop to ``H x W``;
7. YCbCr -> RGB, divide by 255, clamp to ``[0, 1]`` (the decoder's range limit).

The tables ``Q`` are the IJG/libjpeg standard tables (ITU-T T.81 Annex K, Tables K.1, K.2) scaled
by ``quality`` exactly as libjpeg's ``jpeg_quality_scaling`` and ``jpeg_add_quant_table`` do with
``force_baseline`` (Pillow's call): ``s = 5000 / q`` (integer division) for ``q < 50``, else
``200 - 2q``; ``Q = clip((base * s + 50) // 100, 1, 255)``.  These are the tables of Ehrlich et al.
(2020), which PiGDM App. B uses; ``tables=`` takes any others (a real file's, read by
:func:`jpeg_file_info`), per image.  What stays approximate against a real codec: libjpeg works in
integers (8-bit YCbCr, an integer DCT, 8-bit output) where we stay in floating point, so the decoded
images agree to ~40-50 dB PSNR, not bit for bit (``tests/test_jpeg.py`` quotes the numbers).

Rounding and its gradient (``rounding``):

* ``"ste"`` (default): the forward value is true rounding, so ``A`` *is* the codec (the solvers'
  residual ``y - A(x0)`` is measured against the real decode, and re-encoding with the same tables
  is idempotent, PiGDM's ``h(h^+(h(x))) = h(x)``: exactly on whole MCUs for grey, 4:4:4, or box
  upsampling, where downsampling after upsampling is the identity; near it with fancy upsampling,
  at image edges padded by replication, or where the clamp bites); the backward pass is the straight-through identity, so the Jacobian is
  that of the codec without quantisation (colour transform, subsampling, DCT: all linear), which
  never vanishes.  Reich et al. (2024, "Differentiable JPEG: the devil is in the details") find
  straight-through variants the more faithful gradients.
* ``"cubic"``: Shin & Song (2017)'s smooth surrogate ``round(x) + (x - round(x))^3`` in the forward
  pass as well, so ``A`` is differentiable everywhere (its gradient ``3 (x - round(x))^2`` is the
  true derivative, which ``torch.autograd.gradcheck`` checks); its value differs from true
  rounding by up to 1/8 of a quantisation step.

PiGDM's pseudo-inverse (Sec. 3.2, "JPEG encoding"): ``h^+`` is JPEG decoding; as ``A`` already
returns the decoded image, ``h_dagger`` is the identity.  The operator is not linear.

PiGDM's own JPEG model (the authors' group's release of PiGDM, ``NVlabs/RED-diff``: ``utils/jpeg_torch.py``,
taken from ``ddrm-jpeg``'s ``functions/jpeg_torch.py``, applied as ``jpeg_decode(jpeg_encode(x, qf), qf)`` by
``utils/degredations.py``) is a simpler codec than the one above: it *decimates* chroma (keeps the top-left
sample of each 2x2 block, ``x[:, 1:, ::2, ::2]``, where libjpeg averages the block) and upsamples it by
replication (box, where libjpeg's decoder uses the triangle filter); it applies no range limit anywhere (no
clamp of the decoded 8x8 blocks to 0..255, no clamp of the RGB output); its colour matrices are rounded
(``-0.1687``, ``-0.3313``, ...; inverse with ``-3.7e-05`` and ``-1.3e-04`` terms); it takes square images whose
side is a multiple of 16 only.  Its quantisation tables are libjpeg's (the same as ours at every quality).
How far apart the two models are, measured (PSNR in dB between the two decoded images, 8-bit inputs: 256x256
centre crops of ``skimage.data`` photos; "clamped": PiGDM's output clipped to ``[0, 1]``; "out of range":
share of PiGDM's output values outside ``[0, 1]``; for scale, ours against Pillow's real codec)::

    image      QF   ours vs PiGDM   (clamped)   out of range   ours vs libjpeg   PiGDM vs libjpeg
    astronaut   5      32.9          35.0         3.6 %           43.4              35.0
    astronaut  10      34.6          36.1         8.6 %           42.1              35.6
    astronaut  20      34.3          35.1         5.6 %           43.0              34.6
    chelsea    10      39.7          40.7         0.7 %           43.9              38.9
    coffee      5      29.8          32.9        12.8 %           40.3              32.5
    coffee     10      33.2          35.6         9.9 %           42.0              35.3
    coffee     20      34.8          36.5         6.3 %           43.5              35.8

so the two measurements differ by about 30-40 dB PSNR (mostly chroma at edges, and PiGDM's out-of-range
values), as much as either differs from a real codec's artefacts at ~40 dB: a model trained or tuned on one
sees a slightly different measurement from the other (``tests/test_code_settings.py`` checks these numbers).
We keep libjpeg's codec (so that ``--measured`` files and synthetic measurements agree); ``upsampling="box"``
gives PiGDM's upsampling, not its decimation or its missing range limits.

Measurement noise: PiGDM's JPEG experiments add none (the decoded image is the measurement); this operator
adds only the ``sigma_y`` it is given (default 0), and ``restore jpeg`` / ``--then jpeg:Q`` measure without
noise unless ``--noise-sigma`` is given (``catalog.default_noise_sigma``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import Operator
from .nonlinear import round_ste

DEFAULT_QUALITY = 10  # PiGDM Table 4 evaluates QF 5, 10 and 20; QF 10 is its middle one and that of its Fig. 8
QUALITY_RANGE = (2, 100)
SUBSAMPLINGS = {"4:4:4": (1, 1), "4:2:2": (1, 2), "4:2:0": (2, 2)}  # (vertical, horizontal) chroma factors
ROUNDINGS = ("ste", "cubic")
UPSAMPLINGS = ("fancy", "box")

# ITU-T T.81 Annex K, Tables K.1 (luminance) and K.2 (chrominance), row-major (natural) order
LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)
CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32),
)

# JFIF (BT.601 full range): [Y, Cb, Cr] = M [R, G, B] + [0, 128, 128], and its inverse
_RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_YCC_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


def quality_scaling(quality: int) -> int:
    """libjpeg's ``jpeg_quality_scaling``: the percentage the standard tables are scaled by."""
    q = min(max(int(quality), 1), 100)
    return 5000 // q if q < 50 else 200 - 2 * q


def quant_tables(quality: int, force_baseline: bool = True) -> torch.Tensor:
    """The ``[2, 8, 8]`` (luma, chroma) tables libjpeg writes at ``quality`` (``jpeg_add_quant_table``)."""
    s = quality_scaling(quality)
    out = []
    for base in (LUMA_TABLE, CHROMA_TABLE):
        t = [min(max((b * s + 50) // 100, 1), 255 if force_baseline else 32767) for b in base]
        out.append(torch.tensor(t, dtype=torch.float64).reshape(8, 8))
    return torch.stack(out)


def dct8_matrix(dtype=torch.float64) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix ``D`` (``F = D B D^T`` is JPEG's FDCT of a block ``B``)."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * 0.5
    d[0] = math.sqrt(1 / 8)
    return d.to(dtype)


def round_cubic(x: torch.Tensor) -> torch.Tensor:
    """Shin & Song (2017): ``round(x) + (x - round(x))^3``, smooth, within 1/8 of ``round(x)``."""
    r = torch.round(x).detach()
    return r + (x - r) ** 3


def _blocks(p: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` (H, W multiples of 8) -> ``[B, H/8, W/8, 8, 8]``."""
    b, h, w = p.shape
    return p.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def _unblocks(c: torch.Tensor) -> torch.Tensor:
    b, nh, nw, _, _ = c.shape
    return c.permute(0, 1, 3, 2, 4).reshape(b, nh * 8, nw * 8)


def _upsample2(c: torch.Tensor, dim: int, fancy: bool) -> torch.Tensor:
    """Double ``c`` along ``dim`` (-1 or -2): libjpeg's triangle filter (edges replicated) or replication.

    Fancy: output ``2i`` is ``3/4 c[i] + 1/4 c[i-1]`` and output ``2i+1`` is ``3/4 c[i] + 1/4 c[i+1]``
    (``c[-1] = c[0]``, ``c[n] = c[n-1]``); on both axes this is ``h2v2_fancy_upsample``'s 9/16, 3/16,
    3/16, 1/16.
    """
    if not fancy:
        return c.repeat_interleave(2, dim)
    n = c.shape[dim]
    prev = torch.cat([c.narrow(dim, 0, 1), c.narrow(dim, 0, n - 1)], dim)
    nxt = torch.cat([c.narrow(dim, 1, n - 1), c.narrow(dim, n - 1, 1)], dim)
    even, odd = 0.75 * c + 0.25 * prev, 0.75 * c + 0.25 * nxt
    shape = list(c.shape)
    shape[dim] = 2 * n
    return torch.stack([even, odd], dim if dim == -1 else -2).reshape(shape)


class JPEG(Operator):
    """JPEG compression at ``quality`` (or with given ``tables``) followed by decoding; see the module docstring.

    ``tables``: ``[2, 8, 8]`` (luma, chroma), ``[1, 8, 8]`` (luma only: grey images) or per image
    ``[B, 2 or 1, 8, 8]``; when given, ``quality`` is not used (recorded as None).
    """

    name = "jpeg"
    linear = False
    residual_scale = 2.0  # an image-valued measurement, like the linear operators

    def __init__(self, in_shape, quality: int | None = DEFAULT_QUALITY, tables: torch.Tensor | None = None,
                 subsampling: str = "4:2:0", rounding: str = "ste", upsampling: str = "fancy",
                 sigma_y: float = 0.0):
        super().__init__(in_shape, sigma_y)
        c = self.in_shape[0]
        if c not in (1, 3):
            raise ValueError(f"JPEG compresses grey (1) or RGB (3) images, not {c} channels")
        if subsampling not in SUBSAMPLINGS:
            raise ValueError(f"subsampling must be one of {', '.join(SUBSAMPLINGS)}, got {subsampling!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        if upsampling not in UPSAMPLINGS:
            raise ValueError(f"upsampling must be one of {', '.join(UPSAMPLINGS)}, got {upsampling!r}")
        if tables is None:
            if quality is None or not QUALITY_RANGE[0] <= int(quality) <= QUALITY_RANGE[1] or int(quality) != quality:
                raise ValueError(f"JPEG quality must be an integer in {QUALITY_RANGE[0]}..{QUALITY_RANGE[1]}, got {quality}")
            quality = int(quality)
            tables = quant_tables(quality)
        else:
            quality = None
            tables = torch.as_tensor(tables, dtype=torch.float64)
        if tables.dim() == 3:
            tables = tables[None]
        if tables.dim() != 4 or tables.shape[-2:] != (8, 8) or tables.shape[1] not in (1, 2):
            raise ValueError(f"tables must be [2 or 1, 8, 8] or [B, 2 or 1, 8, 8], got {tuple(tables.shape)}")
        if c == 3 and tables.shape[1] < 2:
            raise ValueError("a colour image needs a chroma table too (this JPEG has a luma table only: it is grey)")
        if bool((tables < 1).any()) or not bool(torch.isfinite(tables).all()):
            raise ValueError("quantisation tables must hold finite values >= 1")
        self.quality, self.subsampling, self.rounding, self.upsampling = quality, subsampling, rounding, upsampling
        self.register_buffer("tables", tables.float(), persistent=False)
        self.register_buffer("dct", dct8_matrix(torch.float32), persistent=False)

    # -- the codec ----------------------------------------------------------------------------
    def _code_plane(self, p: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Encode and decode one plane ``[B, H, W]`` (multiples of 8, 8-bit units) with ``table`` ``[Bt, 8, 8]``."""
        d = self.dct.to(p.dtype)
        q = table.to(p.dtype)[:, None, None]  # [Bt, 1, 1, 8, 8]
        coef = d @ _blocks(p - 128.0) @ d.T
        rnd = round_ste if self.rounding == "ste" else round_cubic
        # libjpeg range-limits every decoded sample to 0..255 (jidctint.c) before upsampling and colour conversion
        return (_unblocks(d.T @ (q * rnd(coef / q)) @ d) + 128.0).clamp(0.0, 255.0)

    def A(self, x):  # noqa: N802
        b, c, h, w = x.shape
        sv, sh = SUBSAMPLINGS[self.subsampling] if c == 3 else (1, 1)
        mh, mw = 8 * sv, 8 * sh  # the MCU
        v = 255.0 * x
        v = F.pad(v, (0, -w % mw, 0, -h % mh), mode="replicate") if (h % mh or w % mw) else v
        luma_t, chroma_t = self.tables[:, 0], self.tables[:, -1]
        if c == 1:
            return (self._code_plane(v[:, 0], luma_t)[:, None, :h, :w] / 255.0).clamp(0, 1)
        m = torch.tensor(_RGB_TO_YCC, dtype=v.dtype, device=v.device)
        ycc = torch.einsum("ij,bjhw->bihw", m, v)
        yy = self._code_plane(ycc[:, 0], luma_t)[:, :h, :w]
        chroma = []
        for k in (1, 2):
            ck = ycc[:, k] + 128.0
            if sv > 1 or sh > 1:
                # libjpeg (jcprepct.c) pads the full-resolution rows only to the sampling factor, downsamples,
                # then repeats the last downsampled row down to the block grid
                rows = h + (-h % sv)
                ck = F.avg_pool2d(ck[:, None, :rows], (sv, sh))
                ck = F.pad(ck, (0, 0, 0, v.shape[-2] // sv - ck.shape[-2]), mode="replicate")[:, 0]
            ck = self._code_plane(ck, chroma_t) - 128.0
            # the component's real samples (libjpeg's downsampled_height/width), then upsampled and cropped
            ck = ck[:, :math.ceil(h / sv), :math.ceil(w / sh)]
            if sv > 1:
                ck = _upsample2(ck, -2, self.upsampling == "fancy")
            if sh > 1:
                ck = _upsample2(ck, -1, self.upsampling == "fancy")
            chroma.append(ck[:, :h, :w])
        ycc_hat = torch.stack([yy, *chroma], 1)
        rgb = torch.einsum("ij,bjhw->bihw", torch.tensor(_YCC_TO_RGB, dtype=v.dtype, device=v.device), ycc_hat)
        return (rgb / 255.0).clamp(0, 1)

    def h_dagger(self, y):
        """PiGDM Sec. 3.2: ``h^+`` is JPEG decoding, the identity on an already decoded image."""
        return y

    def params(self):
        out = {**super().params(), "quality": self.quality, "subsampling": self.subsampling if self.in_shape[0] == 3 else None,
               "rounding": self.rounding, "upsampling": self.upsampling}
        if self.quality is None:  # tables from a file: record them
            t = self.tables if self.tables.shape[0] == 1 else self.tables[:1]
            out["tables"] = [[int(round(float(v))) for v in tab.flatten()] for tab in t[0]]
        return out

    def select(self, idx):
        t = self.tables if self.tables.shape[0] == 1 else self.tables[idx]
        return JPEG(self.in_shape, self.quality, None if self.quality is not None else t, self.subsampling,
                    self.rounding, self.upsampling, self.sigma_y)


def jpeg_file_info(path: Path) -> dict:
    """What a JPEG file's header says about its compression: ``{"tables": [[64 ints] per table used,
    luma first], "subsampling": "4:2:0" | "4:2:2" | "4:4:4" | None (grey), "components": 1 or 3}``.

    The tables are Pillow's ``Image.quantization`` (natural order), picked by each component's table
    index (``im.layer``); the subsampling is Pillow's ``JpegImagePlugin.get_sampling``, checked
    against the components' sampling factors.  Raises ``ValueError`` (one line) for a file that is
    not a baseline/progressive JPEG with 1 (grey) or 3 (YCbCr) components and standard sampling.
    """
    from PIL import Image, JpegImagePlugin

    with Image.open(path) as im:
        if im.format not in ("JPEG", "MPO"):
            raise ValueError(f"{path} is not a JPEG file (it is {im.format}): measured JPEG restoration reads "
                             "the file's quantisation tables")
        layers = list(getattr(im, "layer", []) or [])
        qt = dict(getattr(im, "quantization", {}) or {})
        if im.mode not in ("L", "RGB") or len(layers) not in (1, 3):
            raise ValueError(f"{path}: a {im.mode} JPEG with {len(layers)} components is not supported (grey or YCbCr only)")
        tables = []
        for comp in layers[:2]:  # luma, then Cb (Cr uses the same table in every encoder we know of)
            idx = comp[3]
            if idx not in qt:
                raise ValueError(f"{path}: component {comp[0]} uses quantisation table {idx}, which the file lacks")
            tables.append([int(v) for v in qt[idx]])
        if len(layers) == 3 and layers[1][3] != layers[2][3]:
            raise ValueError(f"{path}: Cb and Cr use different quantisation tables (not supported)")
        if len(layers) == 1:
            return {"tables": tables, "subsampling": None, "components": 1}
        sampling = JpegImagePlugin.get_sampling(im)
        names = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
        chroma_ok = all(c[1] == 1 and c[2] == 1 for c in layers[1:])
        if sampling not in names or not chroma_ok:
            raise ValueError(f"{path}: chroma sampling {[(c[1], c[2]) for c in layers]} is not 4:4:4, 4:2:2 or 4:2:0")
        return {"tables": tables, "subsampling": names[sampling], "components": 3}
