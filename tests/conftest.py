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
