"""Getting a model's weights: the Hub (revision-pinned, only the files needed), the cache, local paths.

Downloads go through ``huggingface_hub.snapshot_download`` with the entry's
pinned ``revision`` and ``allow_patterns`` limited to the components the
model needs (configs, tokenizer files and weights, safetensors preferred:
``.bin`` files are fetched only for a component that has no safetensors).
``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` (or a
``huggingface-cli login``) are honoured because huggingface_hub reads them.
"""

from __future__ import annotations

from pathlib import Path
import torch

from .config import ModelSpec


class ModelUnavailable(RuntimeError):
    """The weights are not on this machine and cannot be downloaded now (a runtime failure)."""


def _patterns(spec: ModelSpec, bins_for: set[str] = frozenset()) -> list[str]:
    pats = ["model_index.json"]
    for comp, sub in spec.components.items():
        pre = f"{sub}/" if sub else ""
        pats += [f"{pre}*.json", f"{pre}*.safetensors", f"{pre}*.txt", f"{pre}*.model"]
        if comp in bins_for:
            pats.append(f"{pre}*.bin")
    return pats


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cached_path(spec: ModelSpec) -> Path | None:
    """The local snapshot of a Hub model if every needed file is already in the cache."""
    from huggingface_hub import snapshot_download

    try:
        p = Path(snapshot_download(spec.repo_id, revision=spec.revision, allow_patterns=_patterns(spec, set(spec.components)),
                                   local_files_only=True))
    except Exception:  # noqa: BLE001 - any lookup failure means "not cached"
        return None
    for sub in spec.components.values():
        d = p / sub if sub else p
        if not any(d.glob("*.safetensors")) and not any(d.glob("*.bin")) and not any(d.glob("*config.json")):
            return None
    return p


def availability(spec: ModelSpec) -> tuple[bool, str]:
    """Whether the model can be used right now without a network, and why."""
    if spec.source == "analytic":
        return True, "built in (analytic)"
    if spec.source in ("bundled", "local"):
        ok = spec.path is not None and Path(spec.path).is_dir()
        return ok, ("bundled with restore" if spec.source == "bundled" else "local directory") if ok else f"missing: {spec.path}"
    p = cached_path(spec)
    return (True, f"in the Hub cache ({p})") if p else (False, "not downloaded")


def how_to_get(spec: ModelSpec) -> str:
    return (f"model {spec.name!r} ({spec.repo_id}@{spec.revision}) is not on this machine: run "
            f"`restore models download {spec.name}` where there is a network, fill the Hub cache (HF_HOME) from another "
            f"machine, or pass a local diffusers directory as --model PATH")


def download(spec: ModelSpec, token: str | None = None, tqdm_class=None) -> Path:
    """Download (or find in the cache) the files a Hub model needs; returns the snapshot directory."""
    if spec.source != "hub":
        ok, why = availability(spec)
        if not ok:
            raise ModelUnavailable(f"model {spec.name!r}: {why}")
        return Path(spec.path) if spec.path else Path(".")
    p = cached_path(spec)
    if p is not None:
        return p
    if _offline():
        raise ModelUnavailable(how_to_get(spec) + " (HF_HUB_OFFLINE is set)")
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = set(HfApi(token=token).list_repo_files(spec.repo_id, revision=spec.revision))
        bins_for = {c for c, sub in spec.components.items()
                    if not any(f.startswith(f"{sub}/" if sub else "") and f.endswith(".safetensors")
                               and f.count("/") == (1 if sub else 0) for f in files)}
        kwargs = {"tqdm_class": tqdm_class} if tqdm_class is not None else {}
        return Path(snapshot_download(spec.repo_id, revision=spec.revision, allow_patterns=_patterns(spec, bins_for),
                                      token=token, **kwargs))
    except Exception as e:  # noqa: BLE001 - network, auth, missing revision: one clear line
        raise ModelUnavailable(f"{how_to_get(spec)} (download failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def load_prior(spec: ModelSpec, device: torch.device, dtype: torch.dtype, allow_download: bool = True,
               tqdm_class=None, token: str | None = None, low_memory: bool = False):
    """Build the prior of a model spec on ``device``."""
    from .priors import DiffusionPrior, GaussianPrior, LatentDiffusionPrior

    if spec.source == "analytic":
        return GaussianPrior.fitted(spec.channels, fit=spec.fitted_to or "photos").to(device)
    if spec.source == "hub":
        root = download(spec, token=token, tqdm_class=tqdm_class) if allow_download else cached_path(spec)
        if root is None:
            raise ModelUnavailable(how_to_get(spec))
    else:
        root = Path(spec.path)
    if spec.kind == "latent":
        prior = LatentDiffusionPrior.from_pretrained(str(root), spec.components, spec.latent_scaling_factor,
                                                     prompt=spec.default_prompt or "", name=spec.name)
        prior = prior.to(device)
        for net in (prior.unet, prior.ae, getattr(prior, "text_encoder", None)):
            if net is not None and dtype != torch.float32:
                net.to(dtype)
        if prior.conditional:  # re-encode the prompt on the device
            prior.set_prompt(prior.prompt)
        prior.low_memory(low_memory)
        if spec.resolution and spec.source == "bundled":  # trained at one size only: adapt images to it (--fit);
            prior.sample_size = spec.resolution  # Hub latent models (SD, LDM) take any size, latents follow the image
        return _record_revision(prior, spec, root)
    unet_sub = spec.components.get("unet") or None
    sched_sub = spec.components.get("scheduler") or None
    prior = DiffusionPrior.from_pretrained(str(root), subfolder=unet_sub, scheduler_subfolder=sched_sub,
                                           name=spec.name)
    prior = prior.to(device)
    if dtype != torch.float32:
        prior.unet.to(dtype)  # the network runs in the requested precision; solver arithmetic stays float32
    return _record_revision(prior, spec, root)


def _record_revision(prior, spec: ModelSpec, root) -> object:
    """The commit actually loaded: a Hub snapshot folder is named by its commit hash."""
    name = Path(root).name
    prior.resolved_revision = name if spec.source == "hub" and len(name) == 40 else spec.revision
    return prior
