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


def tiny_unet(out_channels: int = 3, in_channels: int = 3, size: int = 8):
    """A randomly initialised diffusers UNet2DModel small enough for the CPU (built from a config)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=out_channels,
                       block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
