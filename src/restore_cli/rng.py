"""Per-image random number generation.

Every image in a batch owns one :class:`torch.Generator`.  All noise is drawn
image by image from its own generator, so the result for an image is the same
whether it is restored alone or inside any batch (DPS's reference code draws
one batch-wide tensor and so does not have this property).
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
        # a simple, documented mix of the run seed and the image index
        g.manual_seed((int(seed) * 1_000_003 + k * 7919) % (2**63 - 1))
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
