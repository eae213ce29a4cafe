"""Per-image random number generation.

Every image in a batch owns one :class:`torch.Generator`.  All noise is drawn
image by image from its own generator, so the result for an image is the same
whether it is restored alone or inside any batch (DPS's reference code draws
one batch-wide tensor and so does not have this property).  Posterior sample ``k >= 1``
of an image (``--samples``) has a generator of its own, seeded from the image's seed and
``k`` (:func:`sample_generators`).
"""

from __future__ import annotations

from typing import Sequence

import torch

Generators = Sequence[torch.Generator]


def make_generators(seed: int, n: int, offset: int = 0) -> list[torch.Generator]:
    """``n`` CPU generators for images ``offset .. offset + n - 1`` of a run with ``seed``.

    Image ``k`` of a run always gets the stream seeded by ``(seed, k)`` whatever
    the batch it lands in.
    """
    gens = []
    for k in range(offset, offset + n):
        g = torch.Generator(device="cpu")
        g.manual_seed(image_seed(seed, k))
        gens.append(g)
    return gens


def image_seed(seed: int, k: int) -> int:
    """The seed of image ``k``'s generator in a run with ``seed`` (a simple, documented mix)."""
    return (int(seed) * 1_000_003 + k * 7919) % (2**63 - 1)


def sample_seed(image: int, k: int) -> int:
    """The seed of posterior sample ``k >= 1`` of an image whose generator seed is ``image``.

    SplitMix64 of the pair (a bijective 64-bit mix), so that sample seeds neither repeat across samples
    nor fall into the simple arithmetic progression of the images' own seeds (:func:`image_seed`)."""
    z = (int(image) + 0x9E3779B97F4A7C15 * (k + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) % (2**63 - 1)


def sample_generators(seed: int, image: int, n: int) -> list[torch.Generator]:
    """Generators of posterior samples ``1 .. n - 1`` of image ``image`` of a run with ``seed``.

    Sample 0 is the image's own generator (:func:`make_generators`, which first draws the measurement), so
    one sample is exactly the single-sample result; sample ``k`` depends only on (seed, image, k), never on
    ``n`` or the batch."""
    gens = []
    for k in range(1, n):
        g = torch.Generator(device="cpu")
        g.manual_seed(sample_seed(image_seed(seed, image), k))
        gens.append(g)
    return gens


def randn(shape_per_image: Sequence[int], gens: Generators, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """A ``[len(gens), *shape_per_image]`` standard normal tensor, row ``i`` from ``gens[i]``.

    Samples are drawn on the CPU (generators are CPU generators so that results
    do not depend on the device) and then moved.
    """
    out = torch.stack([torch.randn(tuple(shape_per_image), generator=g, dtype=torch.float32) for g in gens])
    return out.to(device=device, dtype=dtype)


def randn_like(x: torch.Tensor, gens: Generators) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (first dimension = one row per generator)."""
    if x.shape[0] != len(gens):
        raise ValueError(f"batch of {x.shape[0]} but {len(gens)} generators")
    return randn(x.shape[1:], gens, device=x.device, dtype=x.dtype)


def rand(shape_per_image: Sequence[int], gens: Generators, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Uniform ``[0, 1)`` counterpart of :func:`randn`."""
    out = torch.stack([torch.rand(tuple(shape_per_image), generator=g, dtype=torch.float32) for g in gens])
    return out.to(device=device, dtype=dtype)


def noise_like(x: torch.Tensor, gens: Generators) -> torch.Tensor:
    """``rng.randn_like(x, gens)`` (the same values: drawn image by image on the CPU from each image's
    generator) without making a GPU wait: on CUDA the draws are copied from pinned memory asynchronously,
    where a plain copy of pageable memory synchronises the host with the device at every step."""
    if x.device.type != "cuda":
        return randn_like(x, gens)
    if x.shape[0] != len(gens):
        raise ValueError(f"batch of {x.shape[0]} but {len(gens)} generators")
    return randn(tuple(x.shape[1:]), gens).pin_memory().to(x.device, non_blocking=True).to(x.dtype)
