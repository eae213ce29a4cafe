"""Getting a model's weights: the Hub (revision-pinned, only the files needed), the cache, local paths.

Downloads go through ``huggingface_hub.snapshot_download`` with the entry's
pinned ``revision`` and ``allow_patterns`` limited to the components the
model needs (configs, tokenizer files and weights, safetensors preferred:
``.bin`` files are fetched only for a component that has no safetensors).
``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and ``HF_TOKEN`` (or a
``huggingface-cli login``) are honoured because huggingface_hub reads them.

Offline, a missing model fails in seconds with one line: the cache is looked in first, and the first
request to a server gets ``REACH_TIMEOUT`` seconds to answer before the libraries' own timeouts and
retries would start (:func:`_first_contact`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

from ..cache import cache_dir
from ..convert.checkpoint import read_record
from .config import ModelSpec


class ModelUnavailable(RuntimeError):
    """The weights are not on this machine and cannot be downloaded now (a runtime failure)."""


# seconds a server gets to answer the first request before it counts as unreachable (a slow link: raise it)
REACH_TIMEOUT = float(os.environ.get("RESTORE_REACH_TIMEOUT", "5"))


class _Unreachable(Exception):
    """The first request to a server got no answer: no network, no DNS, refused, timed out."""


def _network_error(e: BaseException) -> bool:
    """A failure to reach a server at all (not an answer from it, such as HTTP 404 or 401)."""
    import socket
    import urllib.error

    if isinstance(e, urllib.error.HTTPError):
        return False
    if isinstance(e, (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror)):
        return True
    # huggingface_hub's HTTP client (httpx): ConnectError, ConnectTimeout, ReadTimeout, ProxyError...
    return any(c.__name__ in ("TimeoutException", "NetworkError", "ProxyError") for c in type(e).__mro__)


def _first_contact(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, the first request to a server, with a deadline of ``REACH_TIMEOUT`` seconds.

    Raises :class:`_Unreachable` when the server cannot be reached (the request, if still waiting, is left
    to end in a daemon thread); any other error is raised as is.
    """
    import threading

    box: dict = {}

    def call():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=call, name="restore-first-contact", daemon=True)
    t.start()
    t.join(REACH_TIMEOUT)
    if t.is_alive():
        raise _Unreachable(f"no answer in {REACH_TIMEOUT:g} s")
    if "error" in box:
        e = box["error"]
        if _network_error(e):
            why = getattr(e, "reason", e)  # urllib wraps the socket's error
            raise _Unreachable(_first_line(why) or "no connection") from None
        raise e
    return box["value"]


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _cannot_reach(spec: ModelSpec, where: str, e: _Unreachable) -> ModelUnavailable:
    """One line: which model, which server, why, and the ways to get the model onto this machine."""
    local = ("pass a local diffusers directory as --model DIR" if spec.format == "diffusers" else
             f"convert a checkpoint you have (`restore models convert {spec.format} FILE --arch {spec.architecture} "
             f"-o DIR`) and pass --model DIR")
    cache = "the Hub cache (HF_HOME)" if spec.format == "diffusers" else "restore's cache (RESTORE_CACHE, ~/.cache/restore)"
    return ModelUnavailable(
        f"model {spec.name!r} is not on this machine and {where} cannot be reached ({e}): connect to the network, "
        f"or run `restore models download {spec.name}` on a connected machine and copy {cache} here, or {local}")


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
    if spec.format != "diffusers":
        p = find_converted(spec)
        return (True, f"converted in the cache ({p})") if p else (False, "not downloaded")
    if spec.source == "analytic":
        return True, "built in (analytic)"
    if spec.source in ("bundled", "local"):
        ok = spec.path is not None and Path(spec.path).is_dir()
        return ok, ("bundled with restore" if spec.source == "bundled" else "local directory") if ok else f"missing: {spec.path}"
    p = cached_path(spec)
    return (True, f"in the Hub cache ({p})") if p else (False, "not downloaded")


def how_to_get(spec: ModelSpec) -> str:
    if spec.format != "diffusers":
        where = spec.url if spec.source == "url" else f"{spec.repo_id}@{spec.revision}:{spec.filename}"
        return (f"model {spec.name!r} ({where}) is not on this machine: run `restore models download {spec.name}` "
                f"where there is a network, or convert a copy you have with `restore models convert {spec.format} "
                f"FILE --arch {spec.architecture} -o DIR` and pass --model DIR")
    return (f"model {spec.name!r} ({spec.repo_id}@{spec.revision}) is not on this machine: run "
            f"`restore models download {spec.name}` where there is a network, fill the Hub cache (HF_HOME) from another "
            f"machine, or pass a local diffusers directory as --model PATH")


def download(spec: ModelSpec, token: str | None = None, tqdm_class=None) -> Path:
    """Download (or find in the cache) the files a Hub model needs; returns the snapshot directory.

    An original checkpoint (``format = "adm"`` or ``"ldm"``) is downloaded, verified and converted
    once; the converted diffusers folder is returned.
    """
    if spec.format != "diffusers":
        return ensure_converted(spec, token=token, tqdm_class=tqdm_class)
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
        files = set(_first_contact(HfApi(token=token).list_repo_files, spec.repo_id, revision=spec.revision))
        bins_for = {c for c, sub in spec.components.items()
                    if not any(f.startswith(f"{sub}/" if sub else "") and f.endswith(".safetensors")
                               and f.count("/") == (1 if sub else 0) for f in files)}
        kwargs = {"tqdm_class": tqdm_class} if tqdm_class is not None else {}
        return Path(snapshot_download(spec.repo_id, revision=spec.revision, allow_patterns=_patterns(spec, bins_for),
                                      token=token, **kwargs))
    except _Unreachable as e:
        raise _cannot_reach(spec, f"the Hub at {_hub_endpoint()}", e) from None
    except Exception as e:  # noqa: BLE001 - network, auth, missing revision: one clear line
        raise ModelUnavailable(f"{how_to_get(spec)} (download failed: {_first_line(e)})") from e


@contextmanager
def quiet_loading():
    """The loading libraries' own log lines and warnings (diffusers' "An error occurred while trying to fetch"
    for a file it then finds another way, transformers' and huggingface_hub's notes) kept off the terminal
    while a model loads: a failure still comes as an exception, which restore says in one line."""
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(diffusers|transformers|huggingface_hub|accelerate)(\.|$)")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_prior(spec: ModelSpec, device: torch.device, dtype: torch.dtype, allow_download: bool = True,
               tqdm_class=None, token: str | None = None, low_memory: bool = False, prompt: str | None = None):
    """Build the prior of a model spec on ``device`` (``prompt``: a text-conditioned model's; default its own),
    the loading libraries' chatter silenced (:func:`quiet_loading`)."""
    with quiet_loading():
        return _load_prior(spec, device, dtype, allow_download, tqdm_class, token, low_memory, prompt)


def _load_prior(spec: ModelSpec, device: torch.device, dtype: torch.dtype, allow_download: bool, tqdm_class,
                token: str | None, low_memory: bool, prompt: str | None):
    from ..priors import DiffusionPrior, GaussianPrior, LatentDiffusionPrior

    if spec.source == "analytic":
        return GaussianPrior.fitted(spec.channels, fit=spec.fitted_to or "photos").to(device)
    components = spec.components
    if spec.format != "diffusers":
        root = ensure_converted(spec, token=token, tqdm_class=tqdm_class, allow_download=allow_download)
        components = converted_components(spec)
    elif spec.source == "hub":
        root = download(spec, token=token, tqdm_class=tqdm_class) if allow_download else cached_path(spec)
        if root is None:
            raise ModelUnavailable(how_to_get(spec))
    else:
        root = Path(spec.path)
    if spec.kind == "latent":
        prior = LatentDiffusionPrior.from_pretrained(str(root), components, spec.latent_scaling_factor,
                                                     prompt=(spec.default_prompt or "") if prompt is None else prompt,
                                                     name=spec.name)
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
    unet_sub = components.get("unet") or None
    sched_sub = components.get("scheduler") or None
    prior = DiffusionPrior.from_pretrained(str(root), subfolder=unet_sub, scheduler_subfolder=sched_sub,
                                           name=spec.name)
    prior = prior.to(device)
    if dtype != torch.float32:
        prior.unet.to(dtype)  # the network runs in the requested precision; solver arithmetic stays float32
    prior.low_memory(low_memory)  # gradient checkpointing in the UNet (DPS, PiGDM backpropagate through it)
    return _record_revision(prior, spec, root)


def _record_revision(prior, spec: ModelSpec, root) -> object:
    """The commit actually loaded: a Hub snapshot folder is named by its commit hash; a converted
    checkpoint records the commit (Hub) and the sha256 of the file it was converted from."""
    name = Path(root).name
    prior.resolved_revision = name if spec.source == "hub" and len(name) == 40 else spec.revision
    rec = read_record(root) if spec.format != "diffusers" else None
    if rec:
        prior.resolved_revision = rec.get("resolved_revision") or spec.revision
        prior.source_sha256 = rec.get("sha256")
    return prior


# -- original checkpoints (ADM .pt on the Hub, CompVis LDM zips): downloaded, verified, converted once --------

def converted_root() -> Path:
    """Where converted checkpoints live: ``$RESTORE_CACHE/converted/<model>/<sha256[:16]>/``."""
    return cache_dir() / "converted"


def converted_components(spec: ModelSpec) -> dict:
    comps = {"unet": "unet", "scheduler": "scheduler"}
    if spec.format == "ldm":
        comps["vqvae"] = "vqvae"
    return comps


def _matches(rec: dict, spec: ModelSpec) -> bool:
    if rec.get("architecture") != spec.architecture or rec.get("format") != spec.format:
        return False
    if spec.sha256:
        return rec.get("sha256") == spec.sha256
    if spec.source == "url":
        return rec.get("url") == spec.url and rec.get("filename") == spec.filename
    return (rec.get("repo_id"), rec.get("filename"), rec.get("revision")) == (spec.repo_id, spec.filename, spec.revision)


def find_converted(spec: ModelSpec) -> Path | None:
    """The complete converted folder of ``spec`` in the cache, if any."""
    base = converted_root() / spec.name
    dirs = [base / spec.sha256[:16]] if spec.sha256 else sorted(base.glob("[0-9a-f]" * 16))
    for d in dirs:
        rec = read_record(d)
        if rec is not None and _matches(rec, spec):
            return d
    return None


def _check_sha(path: Path, actual: str, expected: str | None, what: str) -> None:
    if expected and actual != expected:
        raise ModelUnavailable(f"{what}: sha256 mismatch (got {actual[:16]}..., expected {expected[:16]}...); "
                               f"the file was removed and not used")


def _open_url(url: str):
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "restore-cli"})
    return urllib.request.urlopen(req, timeout=60)  # noqa: S310 - the registry's URL (http(s) or file)


def _download_url(url: str, dest: Path, tqdm_class=None) -> str:
    """Stream ``url`` to ``dest`` (a temporary name), checking its length; returns its sha256."""
    import hashlib

    h = hashlib.sha256()
    with _first_contact(_open_url, url) as r:
        total = int(r.headers.get("Content-Length") or 0) or None
        bar = tqdm_class(total=total, unit="B", unit_scale=True, desc=Path(url).name) if tqdm_class else None
        n = 0
        with open(dest, "wb") as f:
            while block := r.read(1 << 22):
                f.write(block)
                h.update(block)
                n += len(block)
                if bar is not None:
                    bar.update(len(block))
        if bar is not None:
            bar.close()
    if total is not None and n != total:
        raise ModelUnavailable(f"download of {url} is truncated ({n} of {total} bytes); nothing was kept")
    return h.hexdigest()


def _extract_member(zip_path: Path, filename: str, dest: Path) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(zip_path) as z:
            names = [n for n in z.namelist() if Path(n).name == filename]
            if not names:
                listing = ", ".join(z.namelist()[:5]) or "nothing"
                raise ModelUnavailable(f"{zip_path.name} does not contain {filename} (it holds {listing})")
            with z.open(names[0]) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
    except zipfile.BadZipFile as e:
        raise ModelUnavailable(f"{zip_path.name} is not a valid zip file ({e})") from None


def _hub_expected_sha(spec: ModelSpec, token) -> tuple[str | None, str | None]:
    """The sha256 the Hub records for the pinned file (an LFS file's etag) and the commit it resolves to."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    meta = get_hf_file_metadata(hf_hub_url(spec.repo_id, spec.filename, revision=spec.revision), token=token)
    etag = (meta.etag or "").strip('"')
    return (etag if len(etag) == 64 else None), meta.commit_hash


def convert_checkpoint(spec_format: str, ckpt: Path, arch: str, dest: Path, record: dict, ema: bool = False) -> Path:
    """Convert one original checkpoint file into ``dest`` (which must not exist)."""
    from ..convert import ConversionError
    from ..convert.checkpoint import convert_adm, convert_ldm, read_state_dict

    try:
        sd = read_state_dict(ckpt)
        if spec_format == "adm":
            return convert_adm(sd, arch, dest, record)
        return convert_ldm(sd, arch, dest, record, ema=ema)
    except ConversionError as e:
        raise ModelUnavailable(str(e)) from None
    except (OSError, RuntimeError, MemoryError) as e:  # a full disk, too little memory: one line
        raise ModelUnavailable(f"converting {Path(ckpt).name} failed: {_first_line(e)}") from None


def _first_line(e) -> str:
    """An error's first line, in its own words (an OSError's without the errno prefix); its class's name
    only when it says nothing else."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def ensure_converted(spec: ModelSpec, token: str | None = None, tqdm_class=None, allow_download: bool = True) -> Path:
    """The converted folder of an original checkpoint: from the cache, or downloaded, verified and converted."""
    found = find_converted(spec)
    if found is not None:
        return found
    if not allow_download:
        raise ModelUnavailable(how_to_get(spec))
    base = converted_root() / spec.name
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".download-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    record = {"model": spec.name, "format": spec.format, "architecture": spec.architecture, "filename": spec.filename}
    try:
        if spec.source == "url":
            if _offline():
                raise ModelUnavailable(how_to_get(spec) + " (HF_HUB_OFFLINE is set)")
            part = tmp / _url_file_name(spec)
            try:
                sha = _download_url(spec.url, part, tqdm_class)
            except ModelUnavailable:
                raise
            except _Unreachable as e:
                from urllib.parse import urlsplit

                u = urlsplit(spec.url)
                raise _cannot_reach(spec, f"{u.scheme}://{u.netloc}", e) from None
            except Exception as e:  # noqa: BLE001 - network, HTTP, a full disk: one line
                raise ModelUnavailable(f"{how_to_get(spec)} (download failed: {_first_line(e)})") from None
            _check_sha(part, sha, spec.sha256, spec.url)
            record |= {"url": spec.url, "sha256": sha, "sha256_verified": bool(spec.sha256)}
            if spec.url.lower().split("?")[0].endswith(".zip"):
                ckpt = tmp / spec.filename
                try:
                    _extract_member(part, spec.filename, ckpt)
                except OSError as e:  # a full disk while extracting
                    raise ModelUnavailable(f"extracting {spec.filename} failed: {_first_line(e)}") from None
                part.unlink()
            else:
                ckpt = part
        else:
            ckpt, sha, verified, commit = _hub_file(spec, token, tqdm_class)
            record |= {"repo_id": spec.repo_id, "revision": spec.revision, "resolved_revision": commit,
                       "sha256": sha, "sha256_verified": verified}
        if not record["sha256_verified"]:
            import sys

            print(f"warning: {spec.name}: no sha256 to check the download against; recorded {sha}", file=sys.stderr)
        return convert_checkpoint(spec.format, ckpt, spec.architecture, base / sha[:16], record)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if base.is_dir() and not any(base.iterdir()):
            base.rmdir()


def _url_file_name(spec: ModelSpec) -> str:
    """The name a URL download is saved under while it is checked: the URL's own file name (a zip), else the
    entry's ``filename``, so that every message names the file a user would recognise."""
    from urllib.parse import unquote, urlsplit

    name = Path(unquote(urlsplit(spec.url).path)).name or "download"
    if name.lower().endswith(".zip"):  # its member spec.filename is extracted beside it
        return name if name != spec.filename else name + ".part"
    return spec.filename or name


def _hub_file(spec: ModelSpec, token, tqdm_class) -> tuple[Path, str, bool, str | None]:
    """Download (or find in the Hub cache) a single checkpoint file and check its sha256."""
    from huggingface_hub import hf_hub_download

    from ..convert.checkpoint import sha256_file

    expected, commit, path = spec.sha256, None, None
    try:
        if not _offline():
            try:
                hub_sha, commit = _first_contact(_hub_expected_sha, spec, token)
                expected = expected or hub_sha
            except _Unreachable as e:  # a copy already in the Hub cache will do; else one line, at once
                path = _cached_hub_file(spec)
                if path is None:
                    raise _cannot_reach(spec, f"the Hub at {_hub_endpoint()}", e) from None
        elif _cached_hub_file(spec) is None:
            raise ModelUnavailable(how_to_get(spec) + " (HF_HUB_OFFLINE is set)")
        if path is None:
            kwargs = {"tqdm_class": tqdm_class} if tqdm_class is not None else {}
            # at the commit the expected sha256 was read for, so that a moving branch cannot mismatch them
            path = Path(hf_hub_download(spec.repo_id, spec.filename, revision=commit or spec.revision, token=token,
                                        **kwargs))
    except ModelUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - network, auth, missing file: one line
        raise ModelUnavailable(f"{how_to_get(spec)} (download failed: {_first_line(e)})") from None
    sha = sha256_file(path)
    if expected and sha != expected:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        _check_sha(path, sha, expected, f"{spec.repo_id}/{spec.filename}")
    if commit is None and len(path.parent.name) == 40:
        commit = path.parent.name
    return path, sha, bool(expected), commit


def _cached_hub_file(spec: ModelSpec) -> Path | None:
    """The checkpoint file in the Hub cache at the pinned revision, if it is there (no network)."""
    from huggingface_hub import try_to_load_from_cache

    p = try_to_load_from_cache(spec.repo_id, spec.filename, revision=spec.revision)
    return Path(p) if isinstance(p, str) else None
