"""The model registry (``models.toml``) as frozen dataclasses, with readable errors."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KINDS = ("pixel", "latent")
SOURCES = ("analytic", "hub", "url", "bundled", "local")
FORMATS = ("diffusers", "adm", "ldm")  # adm/ldm: an original checkpoint, converted once into the cache


class ConfigError(ValueError):
    """A problem in a models file or a model name: a usage error."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    source: str
    repo_id: str | None = None
    revision: str | None = None
    components: dict = field(default_factory=dict)
    resolution: int | None = None
    channels: int = 3
    prediction_type: str = "epsilon"
    latent_scaling_factor: float | None = None
    default_prompt: str | None = None
    description: str = ""
    licence: str = ""
    path: str | None = None  # bundled / local models: a directory
    fitted_to: str | None = None  # analytic models: the data the Gaussian prior was fitted to (photos, fashion-mnist)
    format: str = "diffusers"  # "adm" / "ldm": an original checkpoint converted once to diffusers (convert/)
    filename: str | None = None  # adm/ldm: the checkpoint file in the Hub repo, or inside the zip at ``url``
    url: str | None = None  # source = "url": where the file (a zip for CompVis's model zoo) is downloaded from
    sha256: str | None = None  # the downloaded file's sha256; verified before the file is used
    architecture: str | None = None  # adm/ldm: the committed config(s) data/architectures/<architecture>.*.json

    def record(self) -> dict:
        """What a run records about its model."""
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, "")}


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    defaults: dict[str, str]

    def get(self, name: str) -> ModelSpec:
        if name in self.models:
            return self.models[name]
        p = Path(name).expanduser()
        if p.is_dir():
            return local_model(p)
        known = ", ".join(sorted(self.models))
        raise ConfigError(f"unknown model {name!r}: not in the registry ({known}) and not a directory")


_FIELDS = {f for f in ModelSpec.__dataclass_fields__ if f != "name"}


def _parse(text: str, origin: str) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{origin}: not valid TOML: {e}") from e
    models = {}
    for name, entry in (data.get("models") or {}).items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{origin}: [models.{name}] must be a table")
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise ConfigError(f"{origin}: [models.{name}] has unknown key(s) {', '.join(unknown)}")
        spec = ModelSpec(name=name, **{"source": "hub", **entry})
        if spec.kind not in KINDS:
            raise ConfigError(f"{origin}: [models.{name}] kind must be one of {KINDS}, got {spec.kind!r}")
        if spec.source not in SOURCES:
            raise ConfigError(f"{origin}: [models.{name}] source must be one of {SOURCES}, got {spec.source!r}")
        if spec.source == "hub" and not spec.repo_id:
            raise ConfigError(f"{origin}: [models.{name}] needs repo_id for source = 'hub'")
        if spec.source == "url" and not spec.url:
            raise ConfigError(f"{origin}: [models.{name}] needs url for source = 'url'")
        if spec.format not in FORMATS:
            raise ConfigError(f"{origin}: [models.{name}] format must be one of {FORMATS}, got {spec.format!r}")
        if spec.format != "diffusers" and not (spec.architecture and spec.filename):
            raise ConfigError(f"{origin}: [models.{name}] format {spec.format!r} needs architecture and filename")
        if spec.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", spec.sha256):
            raise ConfigError(f"{origin}: [models.{name}] sha256 must be 64 lowercase hex digits")
        if spec.source == "bundled" and spec.path:
            base = Path(origin).parent if origin != "built-in" else Path(str(resources.files("restore_cli")))
            spec = ModelSpec(**{**spec.__dict__, "path": str((base / spec.path).resolve())})
        models[name] = spec
    return models, dict(data.get("defaults") or {})


def load_registry(extra: Path | None = None) -> Registry:
    """The built-in registry, updated with the entries of ``extra`` (``--models-file``)."""
    text = resources.files("restore_cli").joinpath("data/models.toml").read_text()
    models, defaults = _parse(text, "built-in")
    if extra is not None:
        extra = Path(extra)
        if not extra.is_file():
            raise ConfigError(f"models file {extra} does not exist")
        more, more_defaults = _parse(extra.read_text(), str(extra))
        models.update(more)
        defaults.update(more_defaults)
    return Registry(models, defaults)


def local_model(path: Path) -> ModelSpec:
    """A model given as a directory in diffusers layout (a UNet with its scheduler, or a pipeline)."""
    path = Path(path).resolve()
    has = lambda *p: path.joinpath(*p).exists()  # noqa: E731
    if has("unet", "config.json"):
        comps = {"unet": "unet", "scheduler": "scheduler"}
        kind = "pixel"
        for ae in ("vqvae", "vae"):
            if has(ae, "config.json"):
                comps[ae], kind = ae, "latent"
        for extra in ("text_encoder", "tokenizer", "class_prompts"):
            if has(extra):
                comps[extra] = extra
    elif has("config.json"):
        comps, kind = {"unet": "", "scheduler": ""}, "pixel"
    else:
        raise ConfigError(f"{path}: not a diffusers model directory (no config.json or unet/config.json)")
    import json

    unet_cfg = json.loads(path.joinpath(comps["unet"], "config.json").read_text())
    size = unet_cfg.get("sample_size")
    return ModelSpec(name=str(path), kind=kind, source="local", path=str(path), components=comps,
                     resolution=int(size if isinstance(size, int) else size[0]) if size and kind == "pixel" else None,
                     channels=int(unet_cfg.get("in_channels", 3)) if kind == "pixel" else 3,
                     description=f"local model at {path}")
