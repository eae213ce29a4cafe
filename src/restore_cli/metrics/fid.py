"""FID and KID of restored images against their references, with torchmetrics' statistics.

What is computed
    The FID Inception network (:mod:`.inception`: TensorFlow's ``inception-2015-12-05`` graph as pytorch-fid
    and torch-fidelity have it, 2048 pool features, images resized to 299 x 299 like TensorFlow 1.x) maps each
    image, quantised to 8 bits, to a feature vector.  Over the two sets of features, torchmetrics computes

    * FID (``torchmetrics.image.fid.FrechetInceptionDistance``): ``|mu_r - mu_f|^2 + tr(S_r + S_f -
      2 (S_r S_f)^(1/2))`` with the sample means and covariances (``n - 1`` denominators);
    * KID (``torchmetrics.image.kid.KernelInceptionDistance``): the unbiased MMD^2 estimate with the kernel
      ``k(x, y) = (x.y / 2048 + 1)^3``, averaged over random subsets of ``min(1000, n_real, n_fake)`` images
      (100 subsets; one when the subset is the whole of both sets), drawn with a fixed seed so that a run
      repeats exactly.

    Both are given the features (an identity ``feature`` module): the network runs once per image for both.

How many images
    FID is biased upward for small sets and its covariances have rank at most ``n - 1`` (below 2048 for
    fewer than 2049 images): values from different numbers of images cannot be compared, and one from fewer
    than :data:`RECOMMENDED_IMAGES` images is only a rough guide (the result carries a note saying so).
    The papers use 1000 (FFHQ, ImageNet validation subsets) to 50000 images.  KID is unbiased for any size and
    is the better number for small sets.  With fewer than 2 images in either set neither is defined: the
    result holds ``None`` and one line saying why.

The weights
    ``weights-inception-2015-12-05-6726825d.pth`` (95,628,359 bytes, sha256 :data:`WEIGHTS_SHA256`), the
    file torch-fidelity downloads (v0.2.0 release; the same bytes as pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth``), lives in ``$RESTORE_CACHE/fid/`` (default
    ``~/.cache/restore/fid/``).  A copy already in torch's hub cache (``$TORCH_HOME/hub/checkpoints``, under
    either name) is used as well.  Every file is checked against the pinned sha256 before use; one with
    another digest is refused.  ``python -m restore_cli.metrics.fid install`` downloads it from the pinned
    URLs (or copies a file you have: ``install --from FILE``); with ``HF_HUB_OFFLINE`` set nothing is
    downloaded and no connection is attempted.  Without the weights :func:`fid_status` says why in one line.

Nothing here imports torchmetrics until FID or KID is computed (``import restore_cli.metrics`` stays light).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..cache import cache_dir
from .inception import NUM_FEATURES, InceptionV3FID

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
WEIGHTS_SIZE = 95_628_359
#: tried in order; both serve the same bytes
WEIGHTS_URLS = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
)
#: names the same file has in torch's hub cache (torch-fidelity's, pytorch-fid's)
HUB_NAMES = (WEIGHTS_FILE, "pt_inception-2015-12-05-6726825d.pth")

MIN_IMAGES = 2
RECOMMENDED_IMAGES = 2048
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000

# seconds a server gets to answer (as models.hub's first contact); a slow link: raise it
REACH_TIMEOUT = float(os.environ.get("RESTORE_REACH_TIMEOUT", "5"))


class FIDUnavailable(RuntimeError):
    """The Inception weights (or torchmetrics) are not usable here; the message is one line."""


# ---------------------------------------------------------------------------------------------- the weights


def weights_path() -> Path:
    """Where :func:`install` puts the weights: ``$RESTORE_CACHE/fid/weights-inception-2015-12-05-6726825d.pth``."""
    return cache_dir() / "fid" / WEIGHTS_FILE


def _hub_candidates() -> list[Path]:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [hub / name for name in HUB_NAMES]


_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered for the process while its size and modification time stay the same."""
    from ..convert.checkpoint import sha256_file

    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(Path(path))
    return _DIGESTS[key]


def find_weights(sha256: str = WEIGHTS_SHA256) -> tuple[Path | None, str]:
    """The verified weights file and where it was found, or ``None`` and why not (one line, no network)."""
    refused = []
    for p in [weights_path(), *_hub_candidates()]:
        if not p.is_file():
            continue
        digest = file_sha256(p)
        if digest == sha256:
            return p, f"FID Inception weights, sha256 {sha256[:12]}... verified ({p})"
        refused.append(f"{p} has sha256 {digest[:12]}..., not the pinned {sha256[:12]}... (delete it)")
    how = (f"run `python -m restore_cli.metrics.fid install` where there is a network and copy {weights_path().parent} "
           f"here, or `python -m restore_cli.metrics.fid install --from FILE` with a copy of {WEIGHTS_FILE}")
    if refused:
        return None, f"FID Inception weights refused: {'; '.join(refused)}; {how}"
    return None, f"no FID Inception weights on this machine ({weights_path()} does not exist): {how}"


def _torchmetrics_problem() -> str | None:
    import importlib.util

    if importlib.util.find_spec("torchmetrics") is None:
        return "torchmetrics is not installed (pip install 'torchmetrics>=1.4')"
    try:
        import torchmetrics.image.fid
        import torchmetrics.image.kid  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a broken install (torch-fidelity without a working torchvision...)
        return f"torchmetrics' FID/KID cannot be imported ({_first_line(e)})"
    return None


def fid_status() -> tuple[bool, str]:
    """``(True, where the weights are)`` or ``(False, why FID cannot be computed)``, one line; never downloads."""
    problem = _torchmetrics_problem()
    if problem:
        return False, problem
    path, why = find_weights()
    return path is not None, why


def _first_line(e: BaseException | str) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set (in the environment now, or as huggingface_hub read it when imported)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    hub = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(hub, "HF_HUB_OFFLINE", False))


def _download(url: str, dest: Path, sha256: str, timeout: float) -> None:
    """``url`` to ``dest`` if its sha256 is ``sha256`` (written beside it, then renamed); raises otherwise."""
    import hashlib
    import urllib.request

    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    h = hashlib.sha256()
    req = urllib.request.Request(url, headers={"User-Agent": "restore-cli"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r, open(tmp, "wb") as f:
            while block := r.read(1 << 20):
                h.update(block)
                f.write(block)
        if h.hexdigest() != sha256:
            raise FIDUnavailable(f"{url} served a file with sha256 {h.hexdigest()[:12]}..., not the pinned "
                                 f"{sha256[:12]}... (refused)")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def install(source: str | Path | None = None, *, urls: tuple[str, ...] = WEIGHTS_URLS,
            sha256: str = WEIGHTS_SHA256, timeout: float | None = None) -> Path:
    """Put the verified weights into the cache and return their path.

    Already there (or in torch's hub cache): nothing is done.  ``source``: a local copy of the file, checked and
    copied (no network).  Otherwise the pinned ``urls`` are tried in order, unless ``HF_HUB_OFFLINE`` is set:
    then :class:`FIDUnavailable` is raised at once, with no connection attempted.
    """
    dest = weights_path()
    if source is None:
        found, _ = find_weights(sha256)
        if found is not None:
            return found
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise FIDUnavailable(f"{source}: no such file")
        digest = file_sha256(source)
        if digest != sha256:
            raise FIDUnavailable(f"{source} has sha256 {digest}, not the pinned {sha256} of {WEIGHTS_FILE} (refused)")
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest
    if offline():
        raise FIDUnavailable(f"FID Inception weights are not in {dest} and HF_HUB_OFFLINE is set, so nothing was "
                             f"downloaded: install them where there is a network and copy {dest.parent} here, or "
                             f"`python -m restore_cli.metrics.fid install --from FILE`")
    errors = []
    for url in urls:
        try:
            _download(url, dest, sha256, REACH_TIMEOUT if timeout is None else timeout)
            return dest
        except Exception as e:  # noqa: BLE001 - network, HTTP, checksum: try the next mirror, then one line
            errors.append(f"{url}: {_first_line(getattr(e, 'reason', e))}")
    raise FIDUnavailable(f"could not download the FID Inception weights ({'; '.join(errors)}); copy {WEIGHTS_FILE} "
                         f"(sha256 {sha256}) here and run `python -m restore_cli.metrics.fid install --from FILE`")


def load_inception(path: str | Path | None = None, sha256: str | None = WEIGHTS_SHA256,
                   device: str | torch.device | None = None) -> InceptionV3FID:
    """The FID network with its weights: ``path`` or the cached file (:func:`find_weights`), checked against
    ``sha256`` (``None``: not checked, for a file you made yourself) and loaded with ``strict=True``, read as
    inert data (no code in the file runs)."""
    from ..convert.checkpoint import load_state_dict

    if path is None:
        path, why = find_weights(sha256 or WEIGHTS_SHA256)
        if path is None:
            raise FIDUnavailable(why)
    path = Path(path)
    if not path.is_file():
        raise FIDUnavailable(f"{path}: no such file")
    if sha256 is not None:
        digest = file_sha256(path)
        if digest != sha256:
            raise FIDUnavailable(f"{path} has sha256 {digest[:12]}..., not the pinned {sha256[:12]}... (refused)")
    net = InceptionV3FID()
    try:
        net.load_state_dict(load_state_dict(path), strict=True)
    except Exception as e:  # noqa: BLE001 - unreadable, or not this network: one line
        raise FIDUnavailable(f"{path}: not the FID Inception weights ({_first_line(e)})") from None
    return net.to(device) if device is not None else net


# ---------------------------------------------------------------------------------------------- the statistics


class _Given(nn.Module):
    """The ``feature`` module handed to torchmetrics: the features are computed already."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def _features_2d(f) -> torch.Tensor:
    f = torch.as_tensor(f).detach().to("cpu", torch.float64)
    if f.dim() != 2:
        raise ValueError(f"features must be [N, D], got {tuple(f.shape)}")
    return f


def frechet_distance(real_features, fake_features) -> float:
    """FID between two sets of feature vectors ``[N, D]`` (torchmetrics' ``FrechetInceptionDistance``)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _features_2d(real_features), _features_2d(fake_features)
    if min(len(real), len(fake)) < MIN_IMAGES:
        raise ValueError(f"FID needs at least {MIN_IMAGES} feature vectors in each set, got {len(real)} and {len(fake)}")
    metric = FrechetInceptionDistance(feature=_Given(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def kernel_inception_distance(real_features, fake_features, subsets: int = KID_SUBSETS,
                              subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple[float, float | None]:
    """KID (mean, std over subsets) between two sets of features ``[N, D]`` (torchmetrics'
    ``KernelInceptionDistance``, polynomial kernel of degree 3, gamma ``1 / D``, coef 1).

    Subsets of ``min(subset_size, n_real, n_fake)`` are drawn with ``seed`` (the global RNG is left as it
    was); when that is the whole of both sets one subset is used and the std is ``None``."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _features_2d(real_features), _features_2d(fake_features)
    if min(len(real), len(fake)) < MIN_IMAGES:
        raise ValueError(f"KID needs at least {MIN_IMAGES} feature vectors in each set, got {len(real)} and {len(fake)}")
    size = min(subset_size, len(real), len(fake))
    whole = size == len(real) == len(fake)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will save all extracted features in buffer"
        metric = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=1 if whole else subsets,
                                         subset_size=size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), (None if whole else float(std))


@dataclass
class FIDResult:
    """FID and KID of one set of restored images against its references.

    ``fid``/``kid`` are ``None`` when not computed; ``note`` then says why in one line (and otherwise carries
    a caveat, such as FID from fewer than :data:`RECOMMENDED_IMAGES` images)."""

    fid: float | None
    kid: float | None
    kid_std: float | None
    n_real: int
    n_fake: int
    note: str | None = None

    @classmethod
    def unavailable(cls, why: str, n_real: int = 0, n_fake: int = 0) -> FIDResult:
        return cls(None, None, None, n_real, n_fake, f"FID/KID not computed: {why}")

    def as_metrics(self) -> dict:
        """For metrics.json: ``fid``, ``kid``, ``kid_std``, ``fid_images`` (restored, reference), ``fid_note``."""
        return {"fid": self.fid, "kid": self.kid, "kid_std": self.kid_std,
                "fid_images": [self.n_fake, self.n_real], "fid_note": self.note}


class FID:
    """Accumulates reference ("real") and restored ("fake") images in ``[0, 1]``; :meth:`compute` gives FID/KID.

    ``FID()`` loads the verified weights (:func:`load_inception`; :class:`FIDUnavailable` if they are not
    here: ask :func:`fid_status` first).  ``network``: any module mapping images to ``[N, D]`` features (a
    random-weight :class:`~.inception.InceptionV3FID` in tests).  Images are processed ``batch_size`` at a time
    on ``device``; features are kept on the CPU (8 bytes x 2048 per image).
    """

    def __init__(self, network: nn.Module | None = None, *, device: str | torch.device | None = None,
                 batch_size: int = 16, kid_subsets: int = KID_SUBSETS, kid_subset_size: int = KID_SUBSET_SIZE):
        self.network = load_inception(device=device) if network is None else network
        if device is not None:
            self.network = self.network.to(device)
        self.network.eval()
        self.device = device
        self.batch_size = batch_size
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self._feats: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` float64 features (CPU) of images ``[N, C, H, W]`` in ``[0, 1]`` (or ``uint8``)."""
        if images.dim() == 3:
            images = images.unsqueeze(0)
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = images[i:i + self.batch_size]
            if self.device is not None:
                batch = batch.to(self.device)
            out.append(self.network(batch).detach().to("cpu", torch.float64))
        return torch.cat(out) if out else torch.zeros(0, getattr(self.network, "num_features", NUM_FEATURES),
                                                      dtype=torch.float64)

    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add reference (``real=True``) or restored (``real=False``) images."""
        self._feats[bool(real)].append(self.features(images))

    def update_features(self, features: torch.Tensor, real: bool) -> None:
        """Add features computed before (by :meth:`features`), e.g. a dataset's references shared by cells."""
        self._feats[bool(real)].append(_features_2d(features))

    def stored_features(self, real: bool) -> torch.Tensor:
        feats = self._feats[bool(real)]
        return torch.cat(feats) if feats else torch.zeros(0, NUM_FEATURES, dtype=torch.float64)

    @property
    def n_real(self) -> int:
        return sum(len(f) for f in self._feats[True])

    @property
    def n_fake(self) -> int:
        return sum(len(f) for f in self._feats[False])

    def reset(self) -> None:
        self._feats = {True: [], False: []}

    def compute(self) -> FIDResult:
        n_real, n_fake = self.n_real, self.n_fake
        if min(n_real, n_fake) < MIN_IMAGES:
            return FIDResult.unavailable(f"FID and KID need at least {MIN_IMAGES} images in each set "
                                         f"({n_fake} restored, {n_real} reference)", n_real, n_fake)
        problem = _torchmetrics_problem()
        if problem:
            return FIDResult.unavailable(problem, n_real, n_fake)
        real, fake = self.stored_features(True), self.stored_features(False)
        fid = frechet_distance(real, fake)
        kid, kid_std = kernel_inception_distance(real, fake, self.kid_subsets, self.kid_subset_size)
        note = None
        if min(n_real, n_fake) < RECOMMENDED_IMAGES:
            note = (f"FID from {min(n_real, n_fake)} < {RECOMMENDED_IMAGES} images is biased upward: compare it only "
                    f"with FID from as many images (KID is unbiased)")
        return FIDResult(fid, kid, kid_std, n_real, n_fake, note)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m restore_cli.metrics.fid")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ins = sub.add_parser("install", help="download the FID Inception weights into restore's cache (sha256-checked)")
    ins.add_argument("--from", dest="source", metavar="FILE",
                     help=f"copy a local {WEIGHTS_FILE} (or pt_inception-2015-12-05-6726825d.pth) instead")
    sub.add_parser("status", help="say whether FID can be computed here (no network)")
    a = ap.parse_args(argv)
    if a.cmd == "install":
        try:
            print(install(a.source))
        except FIDUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    ok, why = fid_status()
    print(f"fid: {'ok' if ok else 'unavailable'} - {why}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
