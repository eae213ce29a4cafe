import os

# tests never touch the network: huggingface_hub reads this once, at import
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ["COLUMNS"] = "250"  # wide Rich tables in captured output

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def gens():
    from restore_cli.rng import make_generators

    return make_generators(123, 2)


from restore_cli.models.testing import save_tiny_latent_model, tiny_unet  # noqa: E402,F401


def tiny_suite_inputs(d):
    """What the bench tests' tiny suites run on, in folder ``d``: ``images/`` with three 16x16 grey images (a
    bright object on black, like Fashion-MNIST) and ``tiny/``, a random pixel model (a local diffusers folder)."""
    import numpy as np
    from diffusers import DDPMScheduler
    from PIL import Image

    imgs = d / "images"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        a = np.zeros((16, 16), np.uint8)
        a[3 + i:12, 4:12 - i] = 200 - 30 * i
        Image.fromarray(np.clip(a + rng.integers(0, 20, a.shape), 0, 255).astype(np.uint8)).save(imgs / f"im{i}.png")
    model = d / "tiny"
    tiny_unet(1, 1, size=16).save_pretrained(model)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(model)
    return imgs, model
