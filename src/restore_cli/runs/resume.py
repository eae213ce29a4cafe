"""What an output folder already holds, and whether a run may resume there.

A rerun resumes only when every result-deciding setting (:data:`RESULT_KEYS`) matches the earlier run's
``metrics.json``; otherwise it is refused naming the differences.  An existing output is skipped only
when the earlier record says it is that input's finished result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from .checks import OUTPUT_SUFFIXES, SAMPLES_SUFFIXES

if TYPE_CHECKING:
    from .plan import Plan


# the parts of metrics.json's "config" that decide the results: a rerun resumes only when they all match
RESULT_KEYS = (("task",), ("mode",), ("operator", "task_options"), ("operator", "noise_sigma"), ("method", "name"),
               ("method", "revision"), ("method", "overrides"), ("method", "diffstategrad"), ("restarts",), ("model", "name"),
               ("model", "revision"), ("model", "prompt"), ("seed",), ("dtype",), ("fit",), ("lpips", "net"),
               ("samples",))
# what a key missing from an earlier run's config meant (it predates the key)
RESULT_DEFAULTS = {("samples",): 1, ("method", "revision"): 1}


def _get(d: dict, path: tuple):
    top = d
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    if d is None and path in RESULT_DEFAULTS and isinstance(top, dict):
        return RESULT_DEFAULTS[path]
    return d


# the words a user knows each result-deciding setting by (its option; a dict's keys are options of their own)
SETTING_NAMES = {("task",): "the task", ("mode",): "the mode (--measured)", ("operator", "noise_sigma"): "--noise-sigma",
                 ("method", "name"): "--method", ("method", "revision"): "the method's revision (a fix to it)",
                 ("method", "diffstategrad"): "--diffstategrad", ("model", "name"): "--model",
                 ("model", "revision"): "the model's revision", ("model", "prompt"): "--prompt", ("seed",): "--seed",
                 ("dtype",): "--dtype", ("fit",): "--fit", ("lpips", "net"): "--lpips-net", ("samples",): "--samples"}
# a dict-valued setting: the name of each of its keys
KEY_NAMES = {("operator", "task_options"): lambda k: "--" + k.replace("_", "-"),
             ("method", "overrides"): lambda k: f"--set {k}",
             ("method", "diffstategrad"): lambda k: f"DiffStateGrad's {k}",
             ("restarts",): lambda k: {"count": "--restarts", "rule": "--restart-rule"}.get(k, f"restarts {k}")}


def _say(v) -> str:
    """A setting's value as a user would type it."""
    if v is None:
        return "not set"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_say(x)}" for k, x in v.items()) or "none"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(_say, v))
    return str(v) if v != "" else '""'


def config_differences(old: dict, new: dict) -> list[str]:
    """``--seed was 0, now 1`` for every result-deciding setting that differs between two runs' configs
    (a dict-valued one, such as the task's options, key by key: ``--mask was box, now random``)."""
    out = []
    for k in RESULT_KEYS:
        a, b = _get(old, k), _get(new, k)
        if a == b:
            continue
        if k in KEY_NAMES and isinstance(a, dict) and isinstance(b, dict):
            out += [f"{KEY_NAMES[k](key)} was {_say(a.get(key))}, now {_say(b.get(key))}"
                    for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key)]
        elif k == ("method", "diffstategrad") and (a is None or b is None):
            out.append(f"--diffstategrad was {'off' if a is None else 'on'}, now {'off' if b is None else 'on'}")
        else:
            out.append(f"{SETTING_NAMES.get(k, ' '.join(k))} was {_say(a)}, now {_say(b)}")
    return out


def previous_records(plan: "Plan", out: Path, config: dict) -> dict[str, dict]:
    """The records of an earlier run into ``out`` to resume from (by input), after checking that it ran
    with the same result-deciding settings; a UsageError names what differs."""
    cfg = plan.cfg
    metrics_path = out / "metrics.json"
    if cfg.overwrite:
        return {}
    done = [s for s in plan.stems if (out / f"{s}.png").exists()]
    if not metrics_path.exists():
        if done:
            raise UsageError(f"{out} holds restored images ({done[0]}.png, ...) but no metrics.json saying how they "
                             "were made; use --overwrite to redo them, or another -o")
        return {}
    try:
        old = json.loads(metrics_path.read_text())
        old_config, old_images = old["config"], old.get("images", [])
        version = old.get("schema_version", 0)
    except Exception as e:  # noqa: BLE001
        why = (e.strerror or "unreadable" if isinstance(e, OSError) else "not valid JSON" if isinstance(e, ValueError)
               else "no run settings in it")
        raise UsageError(f"{metrics_path} is not a readable restore metrics file ({why}); "
                         "use --overwrite to start over, or another -o") from None
    if version < 2:
        raise UsageError(f"{out} holds results of an older restore (metrics schema {version}); "
                         "use --overwrite to redo them with this one, or another -o")
    diff = config_differences(old_config, config)
    if diff:
        raise UsageError(f"{out} holds results made with other settings ({'; '.join(diff)}); "
                         "use --overwrite to redo them with these, or another -o")
    return {r["input"]: r for r in old_images if isinstance(r, dict) and "input" in r}


def _named_files(rec: dict) -> set[str]:
    """The file names (in the output folder) an image record names as its outputs."""
    samples = rec.get("samples") if isinstance(rec.get("samples"), dict) else {}
    runs = samples.get("runs") if isinstance(samples.get("runs"), list) else []
    names = [rec.get("output"), rec.get("measurement"), samples.get("std"), samples.get("std_array")]
    names += [r.get("output") for r in runs if isinstance(r, dict)]
    return {Path(n).name for n in names if isinstance(n, str) and n}


def run_outputs(plan: "Plan") -> set[str]:
    """Every file name this run may write in its output folder (lower case: a case-insensitive file system)."""
    n = plan.cfg.samples
    names = {"metrics.json"}
    for stem in plan.stems:
        names |= {stem + s for s in OUTPUT_SUFFIXES}
        if n > 1:
            names |= {stem + s for s in SAMPLES_SUFFIXES} | {f"{stem}.sample-{j}.png" for j in range(n)}
    return {x.lower() for x in names}


def stale_outputs(plan: "Plan", out: Path) -> list[Path]:
    """With ``--overwrite``: the files that the earlier run's records of this run's outputs named and that
    this run will not write again (``sample-K.png`` beyond this run's ``--samples``, a ``std`` map when it
    takes one sample).  Removed before the run starts (:func:`remove_stale`), so that no result of the
    superseded run is left beside this one's, even if this one stops early.  Never a file this run
    writes or reads, nor one no record names (the user's own)."""
    path = out / "metrics.json"
    if not plan.cfg.overwrite or not path.exists():
        return []
    try:
        old = json.loads(path.read_text()).get("images", [])
    except Exception:  # noqa: BLE001 - an unreadable file names nothing
        return []
    ours = run_outputs(plan)
    inputs = {Path(p).resolve() for p in plan.images}
    mine = {f"{stem}.png".lower() for stem in plan.stems}
    gone = set()
    for rec in old:
        if not isinstance(rec, dict) or not isinstance(rec.get("output"), str):
            continue
        if Path(rec["output"]).name.lower() not in mine:
            continue  # an image this run does not redo: its record and files are kept
        gone |= {name for name in _named_files(rec) if name.lower() not in ours}
    return sorted(out / name for name in gone if (out / name).is_file() and (out / name).resolve() not in inputs)


def remove_stale(paths: list[Path]) -> list[str]:
    """Remove :func:`stale_outputs`; a warning for each that cannot be removed (the run goes on)."""
    warnings = []
    for f in paths:
        try:
            f.unlink(missing_ok=True)
        except OSError as e:
            warnings.append(f"--overwrite: could not remove the earlier run's {f} ({e.strerror or e})")
    return warnings


def plan_records(plan: "Plan", out: Path, config: dict) -> tuple[list[dict], list[dict], list[int]]:
    """(an earlier run's records of other images, kept; one record per input: skipped or pending; the
    indices of the inputs still to do).

    An existing output is skipped only when the earlier run's record says it is this input's finished
    result; if it is its unfinished one (pending, failed), it is redone; if the record gives it to another
    input (``x/a.png`` then ``y/a.png`` into one folder) or no record names it, the run is refused."""
    cfg = plan.cfg
    previous = previous_records(plan, out, config)
    ours = {str(p) for p in plan.images}
    outputs = {str(out / f"{stem}.png") for stem in plan.stems}
    made_from = {r.get("output"): k for k, r in previous.items()}
    # an earlier run's other images are kept, unless this run writes their output (their file is gone)
    carried = [r for k, r in previous.items() if k not in ours and r.get("output") not in outputs]
    records: list[dict] = []
    todo = []
    for i, (p, stem) in enumerate(zip(plan.images, plan.stems)):
        path = str(out / f"{stem}.png")
        prev = previous.get(str(p))
        if not cfg.overwrite and Path(path).exists() and (prev is None or prev.get("output") != path):
            origin = f"it was made from {made_from[path]}" if path in made_from else "no record in metrics.json names it"
            raise UsageError(f"{path} exists but is not the result of {p} ({origin}); use another -o, or --overwrite")
        if not cfg.overwrite and Path(path).exists() and prev.get("status") in ("ok", "skipped"):
            rec = dict(prev)
            rec.update({"input": str(p), "output": path, "status": "skipped"})
        else:
            rec = {"input": str(p), "output": str(out / f"{stem}.png"), "status": "pending", "error": None}
            todo.append(i)
        records.append(rec)
    return carried, records, todo
