"""Train restore's small bundled priors on Fashion-MNIST (training split only), on the CPU.

    python training/train_priors.py pixel  [--minutes 90] [--steps 20000]
    python training/train_priors.py vae    [--minutes 30]
    python training/train_priors.py latent [--minutes 90]      # needs the trained vae
    python training/train_priors.py export pixel|latent        # diffusers folders under src/restore_cli/weights/

Data: Debian's ``dataset-fashion-mnist`` (MIT; ``/usr/share/datasets/fashion-mnist``),
28x28 grey images padded with background to 32x32 and mapped to ``[-1, 1]``.

* pixel: ``UNet2DModel`` (1.1M parameters, attention at 8x8) + ``DDPMScheduler`` (1000 steps,
  linear betas), epsilon prediction, AdamW 2e-4, batch 64, EMA 0.999.  Measured here: ~1 s a
  step on 2 cores in float32; bf16 autocast was 25x *slower* on this CPU, so it is off by default.
* vae: ``AutoencoderKL`` with f = 4 (32x32x1 -> 8x8x4), L1 + small KL.
* latent: ``UNet2DConditionModel`` on the vae's latents, conditioned through cross-attention
  on a learned embedding per class name and a null embedding (10% class dropout), so that
  classifier-free guidance and P2L's prompt tuning have something real to act on.

Seeded and resumable: a checkpoint (weights, EMA, optimiser, step, RNG states, data order)
is written to ``training/<name>/`` every few minutes and at the end; rerunning the same
command continues from it.  Time per step is printed, so the budget can be planned.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as ``[N, 1, 32, 32]`` in ``[-1, 1]`` (the model space) and labels; ``split`` is 'train' or 't10k'."""
    from restore_cli.bench.suite import load_fashion_mnist

    x, y = load_fashion_mnist({"t10k": "test"}.get(split, split))
    return x * 2 - 1, y


def pixel_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def vae_model():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(32, 64, 64),
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         layers_per_block=1, norm_num_groups=8, sample_size=32)


def latent_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 96),
                                layers_per_block=1, norm_num_groups=16, cross_attention_dim=64,
                                attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


class ClassEmbedding(torch.nn.Module):
    """A learned 4-token 'prompt' per class name plus a null prompt (index 10)."""

    def __init__(self, dim=64, tokens=4):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(len(CLASSES) + 1, tokens, dim) * 0.02)

    def forward(self, labels):
        return self.table[labels]


def checkpoint_dir(name):
    d = ROOT / "training" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_ckpt(name, state: dict, meta: dict):
    from safetensors.torch import save_file

    d = checkpoint_dir(name)
    flat = {}
    for group, sd in state.items():
        for k, v in sd.items():
            flat[f"{group}/{k}"] = v.detach().contiguous().cpu()
    save_file(flat, str(d / "ckpt.safetensors.tmp"))
    (d / "ckpt.safetensors.tmp").replace(d / "ckpt.safetensors")
    (d / "state.json").write_text(json.dumps(meta, indent=1))


def load_ckpt(name):
    from safetensors.torch import load_file

    d = checkpoint_dir(name)
    if not (d / "ckpt.safetensors").exists():
        return None, None
    flat = load_file(str(d / "ckpt.safetensors"))
    state: dict = {}
    for k, v in flat.items():
        group, key = k.split("/", 1)
        state.setdefault(group, {})[key] = v
    return state, json.loads((d / "state.json").read_text())


def optim_state_to_tensors(opt) -> dict:
    out = {}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def load_optim_tensors(opt, flat: dict):
    sd = opt.state_dict()
    state: dict = {}
    for k, v in flat.items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def train(name, model, loss_fn, params, args, extra_modules=None, lr=2e-4, batch=64, ema_decay=0.999, data=None):
    torch.manual_seed(args.seed)
    x_train, y_train = data if data is not None else load_split("train")
    modules = {"model": model, **(extra_modules or {})}
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state, meta = load_ckpt(name)
    step, epoch, pos = 0, 0, 0
    perm_gen = torch.Generator().manual_seed(args.seed)
    if state is not None:
        for k, m in modules.items():
            m.load_state_dict(state[k])
        ema = state["ema"]
        load_optim_tensors(opt, state["optim"])
        step, epoch, pos = meta["step"], meta["epoch"], meta["pos"]
        torch.set_rng_state(state["rng"]["torch"])
        print(f"resumed {name} at step {step}", flush=True)
    perm_gen.manual_seed(args.seed + epoch)
    perm = torch.randperm(len(x_train), generator=perm_gen)
    t_start = last_save = time.time()
    losses = []
    while step < args.steps and (time.time() - t_start) < args.minutes * 60:
        if pos + batch > len(perm):
            epoch, pos = epoch + 1, 0
            perm_gen.manual_seed(args.seed + epoch)
            perm = torch.randperm(len(x_train), generator=perm_gen)
        idx = perm[pos:pos + batch]
        pos += batch
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = loss_fn(x_train[idx], y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(ema_decay).add_(v.detach(), alpha=1 - ema_decay)
                else:
                    ema[k].copy_(v)
        step += 1
        losses.append(float(loss.detach()))
        if step % 100 == 0:
            el = time.time() - t_start
            print(f"{name} step {step} loss {np.mean(losses[-100:]):.4f} {el / len(losses):.3f}s/step", flush=True)
        if time.time() - last_save > 300 or step >= args.steps:
            _save(name, modules, ema, opt, step, epoch, pos, losses)
            last_save = time.time()
    _save(name, modules, ema, opt, step, epoch, pos, losses)
    print(f"{name}: stopped at step {step}", flush=True)


def _save(name, modules, ema, opt, step, epoch, pos, losses):
    state = {k: m.state_dict() for k, m in modules.items()}
    state["ema"] = ema
    state["optim"] = optim_state_to_tensors(opt)
    state["rng"] = {"torch": torch.get_rng_state()}
    prev = {}
    p = checkpoint_dir(name) / "state.json"
    if p.exists():
        prev = json.loads(p.read_text())
    hist = prev.get("loss_history", []) + ([float(np.mean(losses[-200:]))] if losses else [])
    save_ckpt(name, state, {"step": step, "epoch": epoch, "pos": pos, "loss_history": hist[-500:]})


def run_pixel(args):
    from diffusers import DDPMScheduler

    model = pixel_unet()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    ab = sched.alphas_cumprod

    def loss_fn(x, _y):
        t = torch.randint(0, 1000, (x.shape[0],))
        eps = torch.randn_like(x)
        a = ab[t].reshape(-1, 1, 1, 1)
        xt = a.sqrt() * x + (1 - a).sqrt() * eps
        return F.mse_loss(model(xt, t).sample.float(), eps)

    print(f"pixel UNet: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    train("pixel", model, loss_fn, list(model.parameters()), args)


def run_vae(args):
    model = vae_model()

    def loss_fn(x, _y):
        post = model.encode(x).latent_dist
        z = post.sample()
        rec = model.decode(z).sample.float()
        kl = post.kl().mean() / x[0].numel()
        return F.l1_loss(rec, x) + 1e-4 * kl

    print(f"vae: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    train("vae", model, loss_fn, list(model.parameters()), args, lr=5e-4)


def load_vae(use_ema=False):
    """The trained autoencoder from its checkpoint (its own weights: at a few thousand steps the
    0.999 EMA still averages in the first, poor steps; measured 18.8 dB vs 24.1 dB on the test split)."""
    state, meta = load_ckpt("vae")
    if state is None:
        raise SystemExit("train the autoencoder first: python training/train_priors.py vae")
    vae = vae_model()
    vae.load_state_dict(state["ema"] if use_ema else state["model"])
    return vae.eval().requires_grad_(False), meta


@torch.no_grad()
def encode_split(vae, split, batch=500):
    """Posterior means and standard deviations of a whole split (cached in training/ per autoencoder step)."""
    cache = checkpoint_dir("latents") / f"{split}-vae{load_ckpt('vae')[1]['step']}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    x, y = load_split(split)
    means, stds = [], []
    for i in range(0, len(x), batch):
        post = vae.encode(x[i:i + batch]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    out = {"mean": torch.cat(means), "std": torch.cat(stds), "label": y}
    torch.save(out, cache)
    return out


def latent_scaling_factor(vae) -> float:
    """1 / std of the training latents (Rombach et al.'s rule; SD's 0.18215 was found this way)."""
    lat = encode_split(vae, "train")
    return float(1.0 / lat["mean"].std())


def run_latent(args):
    from diffusers import DDPMScheduler

    vae, _ = load_vae()
    lat = encode_split(vae, "train")
    sf = latent_scaling_factor(vae)
    print(f"latents {tuple(lat['mean'].shape[1:])}, scaling factor {sf:.4f}", flush=True)
    model = latent_unet()
    emb = ClassEmbedding(dim=model.config.cross_attention_dim)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ab = sched.alphas_cumprod
    null = len(CLASSES)

    def loss_fn(idx, labels):
        z0 = (lat["mean"][idx] + lat["std"][idx] * torch.randn_like(lat["std"][idx])) * sf
        drop = torch.rand(len(labels)) < 0.1  # class dropout: the null prompt, for classifier-free guidance
        cond = emb(torch.where(drop, torch.full_like(labels, null), labels))
        t = torch.randint(0, 1000, (len(idx),))
        eps = torch.randn_like(z0)
        a = ab[t].reshape(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        return F.mse_loss(model(zt, t, encoder_hidden_states=cond).sample.float(), eps)

    class WithEmbedding(torch.nn.Module):  # one module, so the EMA covers the UNet and the class table
        def __init__(self):
            super().__init__()
            self.unet, self.emb = model, emb

    both = WithEmbedding()
    print(f"latent UNet: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    train("latent", both, lambda idx, y: loss_fn(idx, y), list(both.parameters()), args, batch=128,
          data=(torch.arange(len(lat["label"])), lat["label"]))


def export(args):
    """Write diffusers folders (safetensors) under src/restore_cli/weights/ (EMA or raw weights: --weights)."""
    from diffusers import DDPMScheduler
    from safetensors.torch import save_file

    out_root = ROOT / "src" / "restore_cli" / "weights"
    which = args.target

    def weights(state, meta):
        """The EMA (decay 0.999) once it has forgotten the initial weights (0.999^10000 < 1e-4);
        before that the raw weights: at 1-3k steps the EMA still holds 5-30 % of the random init."""
        use = args.weights if args.weights != "auto" else ("ema" if meta["step"] >= 10000 else "raw")
        meta["exported_weights"] = use
        return state["ema"] if use == "ema" else state["model"]

    if which == "pixel":
        state, meta = load_ckpt("pixel")
        model = pixel_unet()
        model.load_state_dict(weights(state, meta))
        d = out_root / "fmnist-ddpm-32"
        model.save_pretrained(d / "unet", safe_serialization=True)
        DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(d / "scheduler")
    elif which == "latent":
        state, meta = load_ckpt("latent")
        vae, vae_meta = load_vae()
        sf = latent_scaling_factor(vae)
        model = latent_unet()
        w = weights(state, meta)
        model.load_state_dict({k[5:]: v for k, v in w.items() if k.startswith("unet.")})
        table = w["emb.table"]
        d = out_root / "fmnist-ldm-kl4-32"
        vae.register_to_config(scaling_factor=sf)
        vae.save_pretrained(d / "vae", safe_serialization=True)
        model.save_pretrained(d / "unet", safe_serialization=True)
        DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                      beta_end=0.012).save_pretrained(d / "scheduler")
        (d / "class_prompts").mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": table[: len(CLASSES)].contiguous(), "null": table[len(CLASSES)].contiguous()},
                  str(d / "class_prompts" / "embeddings.safetensors"))
        (d / "class_prompts" / "classes.json").write_text(json.dumps({"classes": CLASSES}, indent=1) + "\n")
        meta = {"latent": meta, "vae": vae_meta}
    else:
        raise SystemExit("export pixel|latent")
    (d / "training.json").write_text(json.dumps({"steps": meta, "seed": args.seed, "data": "Fashion-MNIST train split",
                                                 "script": "training/train_priors.py"}, indent=1) + "\n")
    print(f"wrote {d}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["pixel", "vae", "latent", "export"])
    ap.add_argument("target", nargs="?")
    ap.add_argument("--minutes", type=float, default=90)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto", help="export: EMA or raw weights")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (fast only on CPUs with bf16 units)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"pixel": run_pixel, "vae": run_vae, "latent": run_latent, "export": export}[args.what](args)


if __name__ == "__main__":
    main()
