"""Reading a `restore bench` results.json: the Markdown table, and the comparison with a baseline.

``compare`` matches cells by key and lists what regressed beyond the tolerances: PSNR and
SSIM lower, LPIPS and the failure rate higher, a cell no longer ok or missing, or a suite run
on other images or seeds (its context hash).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from .suite import SuiteError, dsg_setting

DEFAULT_TOLERANCES = {"psnr": 0.5, "ssim": 0.02, "lpips": 0.02, "failure_rate": 0.10}


def load_results(path: Path, what: str = "results file", need_cells: bool = True) -> dict:
    """A results.json written by :func:`restore_cli.bench.runner.run_suite`, or :class:`SuiteError` with one line
    (missing, unreadable, empty, not JSON, no ``cells``; with ``need_cells``, none run yet).  ``what``: how the
    message names it (a ``baseline``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SuiteError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SuiteError(f"{path}: cannot read it ({e})") from None
    if not text.strip():
        raise SuiteError(f"{path}: empty file, not a restore bench results.json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SuiteError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
        raise SuiteError(f"{path}: not a restore bench results.json (no 'cells')")
    if need_cells and not data["cells"]:
        raise SuiteError(f"{path}: no cells (the suite has not run a cell yet)")
    return data


def current_revision(method: str, task: str, space: str | None = None) -> int | None:
    """The revision of ``method``'s results on ``task`` with a ``space`` model (None: the method's first)
    in this restore (``Solver.method_revision``); None for a method it no longer has."""
    from ..models.catalog import METHODS

    info = METHODS.get(method)
    return None if info is None else info.cls.method_revision(task, space or info.spaces[0])


@functools.cache
def _model_space(model: str) -> str | None:
    """A model's kind by its registry name or folder (cells from before ``space`` was recorded)."""
    from ..models.config import load_registry

    try:
        return load_registry().get(model).kind
    except Exception:  # noqa: BLE001 - a model no longer known: the method's first space
        return None


def outdated(cell: dict, space: str | None = None) -> bool:
    """Whether a cell was made by an earlier revision of its method than this restore's (a cell from
    before revisions were recorded counts as revision 1): ``restore bench`` reruns it.  ``space``: its
    model's kind, when the caller knows it (else the cell's record, else the registry's)."""
    cfg = cell["config"]
    space = cell.get("space") or space or _model_space(cfg.get("model", ""))
    cur = current_revision(cfg["method"], cfg["task"], space)
    return cur is not None and cell.get("method_revision", 1) < cur


def _fmt(s: dict | None, d: int) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.{d}f} ({s['std']:.{d}f})"


def _fmt1(s: dict | None) -> str:
    return "-" if not s or s.get("mean") is None else f"{s['mean']:.2f}"


def markdown_table(data: dict) -> str:
    suite = data["suite"]
    with_fid = "fid" in data  # the suite computes FID and KID (available or not: the columns say n/a)
    lines = [f"# {suite['name']}", ""]
    if suite.get("description"):
        lines += [suite["description"], ""]
    lines += [f"{suite['n_images']} images x {len(suite['seeds'])} seed(s); mean (std) per image; failure = PSNR < "
              f"{suite['failure_psnr']:g} dB; device {data['device']}; LPIPS {data['lpips']['net']}"
              + ("" if data["lpips"]["available"] else " (unavailable)") + ".", "",
              "| task | method | DSG | model | setting | PSNR | SSIM | LPIPS | fail | NFE | s/img | peak MB |"
              + (" FID | KID |" if with_fid else ""),
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if with_fid else "")]
    noises = [c["config"].get("noise_sigma") for c in data["cells"].values()]
    usual = suite.get("noise_sigma", max(set(noises), key=noises.count) if noises else None)  # shown when a cell differs
    old = 0
    for key, c in data["cells"].items():
        cfg = c["config"]
        task = cfg["task"] + ("" if not cfg["task_opts"] else " " + ",".join(str(v) for v in cfg["task_opts"].values()))
        setting = ", ".join([f"{k}={v}" for k, v in sorted(cfg["hparams"].items())] + dsg_setting(cfg.get("dsg_opts", {}))
                            + ([f"guidance x{cfg['guidance']:g}"] if cfg["guidance"] != 1.0 else [])
                            + ([f"steps={cfg['steps']}"] if cfg.get("steps") else [])
                            + ([f"noise {cfg['noise_sigma']:g}"] if cfg.get("noise_sigma") not in (None, usual)
                               else [])) or "default"
        if c["status"] == "ok" and outdated(c):
            setting, old = setting + " †", old + 1
        head = f"| {task} | {cfg['method']} | {'yes' if cfg['diffstategrad'] else 'no'} | {cfg['model']} | {setting} |"
        if c["status"] != "ok":
            lines.append(f"{head} {c['status']}: {c.get('reason') or c.get('error')} | | | | | | |" + (" | |" if with_fid else ""))
            continue
        s = c["summary"]
        mem = "-" if s["peak_memory_mb"] is None else f"{s['peak_memory_mb']:.0f}"
        lines.append(f"{head} {_fmt(s['psnr'], 2)} | {_fmt(s['ssim'], 3)} | {_fmt(s['lpips'], 3)} | "
                     f"{100 * s['failure_rate']:.0f}% | {s['nfe']} | {_fmt1(s['seconds'])} | {mem} |"
                     + (f" {_fmt(s.get('fid'), 2)} | {_fmt(s.get('kid'), 4)} |" if with_fid else ""))
    if with_fid and not data["fid"]["available"]:
        lines += ["", f"FID and KID were not computed: {data['fid']['source']}."]
    if old:
        lines += ["", f"† {old} cell(s) made by an earlier revision of their method (a fix or a new default "
                  "since): `restore bench` reruns them."]
    return "\n".join(lines) + "\n"


def parse_tolerances(items: list[str]) -> dict[str, float]:
    tol = dict(DEFAULT_TOLERANCES)
    for item in items:
        k, v = item.split("=", 1) if "=" in item else ("psnr", item)
        if k not in DEFAULT_TOLERANCES:
            raise SuiteError(f"--tolerance: unknown metric {k!r}; known: {', '.join(DEFAULT_TOLERANCES)}")
        try:
            tol[k] = float(v)
        except ValueError:
            raise SuiteError(f"--tolerance expects METRIC=VALUE or a PSNR in dB, got {item!r}") from None
        if tol[k] < 0:
            raise SuiteError(f"--tolerance {k}: must be >= 0")
    return tol


def compare(current: dict, baseline: dict, tol: dict[str, float]) -> list[dict]:
    """Regressions of ``current`` against ``baseline`` (cells matched by key)."""
    worse = []
    ctx_now, ctx_base = current.get("suite", {}).get("context"), baseline.get("suite", {}).get("context")
    if ctx_now and ctx_base and ctx_now != ctx_base:
        worse.append({"cell": "(suite)", "metric": "images/seeds", "baseline": ctx_base, "now": ctx_now, "limit": "same"})
    for key, base in baseline.get("cells", {}).items():
        if base.get("status") != "ok":
            continue
        cur = current["cells"].get(key)
        label = base.get("label", key)
        if cur is None:
            worse.append({"cell": label, "metric": "-", "baseline": "ok", "now": "missing", "limit": "-"})
            continue
        if cur.get("status") != "ok":
            worse.append({"cell": label, "metric": "status", "baseline": "ok", "now": cur.get("status"), "limit": "-"})
            continue
        bs, cs = base["summary"], cur["summary"]
        for metric, sign in (("psnr", -1), ("ssim", -1), ("lpips", +1)):
            b, c = (bs.get(metric) or {}).get("mean"), (cs.get(metric) or {}).get("mean")
            if b is None or c is None:
                continue
            if sign * (c - b) > tol[metric]:
                worse.append({"cell": label, "metric": metric, "baseline": b, "now": c, "limit": tol[metric]})
        if cs["failure_rate"] - bs["failure_rate"] > tol["failure_rate"] + 1e-12:
            worse.append({"cell": label, "metric": "failure_rate", "baseline": bs["failure_rate"],
                          "now": cs["failure_rate"], "limit": tol["failure_rate"]})
    return worse


# --- reading and merging results files (restore bench report) -------------------------------------------

def cells(data):
    """Every cell the suite plans that can run (a skipped cell's method does not support its task):
    (config, cell)."""
    for c in data["cells"].values():
        if isinstance(c, dict) and isinstance(c.get("config"), dict) and c.get("status") != "skipped":
            yield c["config"], c


def task_of(c) -> str:
    """A cell's task with its options, as its label writes it: 'inpaint[mask=box]', 'hdr[]'."""
    label = c.get("label")
    if label:
        return label.split()[0]
    cfg = c["config"]
    return f"{cfg['task']}[{','.join(f'{k}={v}' for k, v in sorted((cfg.get('task_opts') or {}).items()))}]"


def default_dsg(opts: dict | None) -> bool:
    """Whether a cell's DiffStateGrad options are its defaults: none given, or only the default rank
    rule and variance cutoff named (a suite that compares rank rules names the default one too)."""
    from ..solvers.projection import DiffStateGrad

    d = DiffStateGrad().params()
    return all(k in ("rank_mode", "var_cutoff") and v == d[k] for k, v in (opts or {}).items())


def at_defaults(cfg: dict, guidance: bool = True) -> bool:
    """A cell of a method at its defaults (not a sweep point); ``guidance``: at guidance x1 too."""
    return (default_dsg(cfg.get("dsg_opts")) and not cfg.get("hparams")
            and (not guidance or float(cfg.get("guidance", 1.0)) == 1.0))


def samples_of(c: dict) -> list[dict]:
    """A cell's saved restorations (``samples``, written by the run for the report's grids)."""
    s = c.get("samples")
    return [r for r in s if isinstance(r, dict) and r.get("restored")] if isinstance(s, list) else []


def _finished(cell: dict) -> float:
    """When the cell finished (POSIX seconds; a time without a zone is UTC); cells from before the time
    was recorded, or with one that cannot be read: minus infinity, the oldest."""
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(cell["finished"])
    except (KeyError, TypeError, ValueError):
        return float("-inf")
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def merge(datas: list[dict], order: list[str] | None = None) -> dict:
    """One results dict from several runs of the same suite, cell by cell: a finished ("ok") cell over a
    skipped or failed one; of two finished, one made by its method's current revision over an outdated
    one, then the one finished later (a ``--rerun``; a cell from before the time was recorded counts as
    the oldest), then the earlier file's.  ``order``: the cell keys in the suite's order (default: as
    the files list them, the first file's first)."""
    rank = {"ok": 0, "skipped": 1, "failed": 2}
    if order is None:
        order = list(dict.fromkeys(k for d in datas for k in d["cells"]))
    merged = {**datas[0], "cells": {}, "models": {}}
    for d in datas:
        merged["models"].update(d.get("models", {}))
    for key in order:
        found = [d["cells"][key] for d in datas if key in d["cells"]]
        if found:
            merged["cells"][key] = min(found, key=lambda c: (rank.get(c.get("status"), 3), outdated(c), -_finished(c)))
    started = [d["started"] for d in datas if d.get("started")]
    finished = [d["finished"] for d in datas if d.get("finished")]
    merged["started"] = min(started) if started else None
    merged["finished"] = max(finished) if len(finished) == len(datas) else None
    return merged


def anchor_samples(data: dict, folder: Path) -> dict:
    """``data`` with its cells' saved-image paths made absolute against ``folder`` (its results.json's), so
    that shards from different folders still find their images once merged."""
    for c in (data.get("cells") or {}).values():
        for r in samples_of(c) if isinstance(c, dict) else []:
            for k in ("measurement", "restored", "truth", "mask"):
                if isinstance(r.get(k), str) and not Path(r[k]).is_absolute():
                    r[k] = str((Path(folder) / r[k]).resolve())
    return data
