"""Reading a `restore bench` results.json: the Markdown table, and the comparison with a baseline.

``compare`` matches cells by key and lists what regressed beyond the tolerances: PSNR and
SSIM lower, LPIPS and the failure rate higher, a cell no longer ok or missing, or a suite run
on other images or seeds (its context hash).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from .suite import SuiteError, _read, dsg_setting

DEFAULT_TOLERANCES = {"psnr": 0.5, "ssim": 0.02, "lpips": 0.02, "failure_rate": 0.10}


def load_results(path: Path) -> dict:
    """A results.json written by :func:`restore_cli.bench.runner.run_suite` (a baseline)."""
    data = _read(path, "baseline", json.loads, json.JSONDecodeError, "JSON")
    if not isinstance(data, dict) or "cells" not in data:
        raise SuiteError(f"{path}: not a restore bench results.json (no 'cells')")
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
