"""Tiny random diffusers models built from a config (no download), for tests and CPU benchmarks."""

from __future__ import annotations

import torch


def tiny_unet(out_channels: int = 3, in_channels: int = 3, size: int = 8):
    """A randomly initialised diffusers UNet2DModel small enough for the CPU (built from a config)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=out_channels,
                       block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


def save_tiny_latent_model(root, kind: str = "vq", conditional: bool = False):
    """A random latent diffusion model in diffusers layout (f = 2), saved under ``root``.

    ``kind``: "vq" (VQModel + UNet2DModel, as LDM-VQ) or "kl" (AutoencoderKL);
    ``conditional``: a UNet2DConditionModel with a tiny CLIP text encoder and tokenizer.
    """
    import json
    from pathlib import Path

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel, VQModel

    root = Path(root)
    torch.manual_seed(0)
    ae_kw = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                 norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    if kind == "vq":
        VQModel(num_vq_embeddings=32, vq_embed_dim=4, scaling_factor=1.0, **ae_kw).save_pretrained(root / "vqvae")
    else:
        AutoencoderKL(sample_size=16, scaling_factor=0.5, **ae_kw).save_pretrained(root / "vae")
    if conditional:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                             layers_per_block=1, norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
                             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_pretrained(root / "unet")
        words = ["a", "photo", "of", "high", "quality", "face", "shoe", "bag"]
        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
        for w in words:
            vocab[w + "</w>"] = len(vocab)
        tdir = root / "tokenizer"
        tdir.mkdir(parents=True)
        (tdir / "vocab.json").write_text(json.dumps(vocab))
        (tdir / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(str(tdir / "vocab.json"), str(tdir / "merges.txt"), model_max_length=8)
        tok.save_pretrained(tdir)
        CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                                     pad_token_id=1)).save_pretrained(root / "text_encoder")
    else:
        UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                    norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root


def fill_hub_cache(cache, repo_id: str, model_dir, revision: str = "0" * 40):
    """Lay ``model_dir`` out in a Hugging Face Hub cache (``models--org--name/{refs/main,snapshots/REV}``)
    as huggingface_hub writes it, so that offline loading can be tested without a download."""
    import shutil
    from pathlib import Path

    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(model_dir, repo / "snapshots" / revision)
    return repo / "snapshots" / revision
