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


def save_random_model(spec, root):
    """A registered real model's exact architecture (``data/architectures/<spec.architecture>.*.json``) with
    random weights, saved as a diffusers folder that ``--model ROOT`` loads: the real-size tier's stand-in
    for weights that cannot be downloaded here.  Text-conditioned models get a stand-in tokenizer (a few
    words; the architecture, not the vocabulary, is what is exercised)."""
    import json
    from pathlib import Path

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel, VQModel

    from ..convert import architecture
    from ..convert.checkpoint import ADM_SCHEDULER, LDM_SCHEDULER

    root, arch = Path(root), spec.architecture
    torch.manual_seed(0)

    def save(cls, name, sub):
        m = cls.from_config(architecture(f"{arch}.{name}"))
        m.save_pretrained(root / sub)
        del m

    def scheduler(cfg):
        (root / "scheduler").mkdir(parents=True)
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))

    if spec.kind == "pixel":
        save(UNet2DModel, "unet", "unet")
        scheduler(ADM_SCHEDULER if spec.format == "adm" else DDPMScheduler().config)
    elif arch.startswith("ldm"):
        save(UNet2DModel, "unet", "unet")
        save(VQModel, "vqvae", "vqvae")
        scheduler(LDM_SCHEDULER)
    else:  # Stable Diffusion
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        save(UNet2DConditionModel, "unet", "unet")
        save(AutoencoderKL, "vae", "vae")
        cfg = {k: v for k, v in architecture(f"{arch}.text_encoder").items() if not k.startswith("_")}
        CLIPTextModel(CLIPTextConfig(**cfg)).save_pretrained(root / "text_encoder")
        tdir = root / "tokenizer"
        tdir.mkdir(parents=True)
        vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
        for w in ("a", "high", "quality", "photo", "of", "face"):
            vocab[w + "</w>"] = len(vocab)
        (tdir / "vocab.json").write_text(json.dumps(vocab))
        (tdir / "merges.txt").write_text("#version: 0.2\n")
        CLIPTokenizer(str(tdir / "vocab.json"), str(tdir / "merges.txt"), model_max_length=77).save_pretrained(tdir)
        scheduler(architecture(f"{arch}.scheduler"))
    return root


# -- the real-size tier: every registered real model, built from its exact config with random weights --------
REAL_MODELS = ("ffhq-256", "imagenet-256", "ldm-ffhq-256", "ldm-celebahq-256", "ddpm-celebahq-256", "sd-v1-5")
# inner loops capped so that a 2-step run stays a wiring check (ReSample's optimisations run up to 500/2000
# iterations per stage, DAPS 100 Langevin steps per annealing step); the sampler steps themselves are real
TIER_CAPS = {"daps": ["--set", "langevin_steps=3", "--set", "ode_steps=2"],
             "latent-daps": ["--set", "langevin_steps=3", "--set", "ode_steps=2"],
             "resample": ["--set", "latent_iters=3", "--set", "pixel_iters=3"],
             "p2l": ["--set", "prompt_steps=1"]}


def real_size_cells(models=REAL_MODELS, tasks: tuple[str, ...] | None = ("inpaint",)):
    """``(model, method, task, dsg)`` for every learned method that runs on each model (both with and
    without DiffStateGrad where it applies), on ``tasks`` (``None``: every task the method supports)."""
    from .catalog import METHODS
    from .config import load_registry

    reg = load_registry()
    for name in models:
        spec = reg.get(name)
        for method, info in METHODS.items():
            if spec.kind not in info.spaces or info.default_model == "analytic":
                continue
            for task in info.tasks:
                if tasks is not None and task not in tasks:
                    continue
                for dsg in ((False, True) if info.cls.gradient_guided else (False,)):
                    yield name, method, task, dsg


def real_size_args(method: str, task: str, dsg: bool, steps: int = 2, device: str = "cpu") -> list[str]:
    """The command-line options of one real-size cell (after ``restore <task> IMAGE --model DIR``)."""
    args = ["--method", method, "--steps", str(steps), *TIER_CAPS.get(method, []), "--device", device,
            "--diffstategrad" if dsg else "--no-diffstategrad", "--quiet"]
    if task == "phase-retrieval":
        args += ["--restarts", "1"]
    return args
