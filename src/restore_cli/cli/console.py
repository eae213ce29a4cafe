"""Terminal output of the ``restore`` command: the two Rich consoles, progress displays for a run
and for a suite, the run's summary table, and the one-line usage error."""

from __future__ import annotations

import time

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

err = Console(stderr=True)
out = Console()


def quiet_hub():
    """huggingface_hub's warnings (a request's retries, one line each) off the user's terminal: a failed
    download is reported once, as one line."""
    try:
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def quiet_libraries():
    """diffusers/transformers loading chatter (progress bars, casting notes) and the Hub's retries off the user's terminal."""
    quiet_hub()
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def usage_error(msg: str) -> int:
    from rich.markup import escape

    err.print(f"[red]usage error:[/red] {escape(msg)}", highlight=False, soft_wrap=True)
    return 2


def rich_tqdm():
    try:
        from tqdm.rich import tqdm

        return tqdm
    except Exception:  # noqa: BLE001
        return None


DEFAULT_PROGRESS_INTERVAL = 30.0  # seconds between progress lines in a log


def progress_interval() -> float:
    """Seconds between plain progress lines when stderr is not a terminal: ``RESTORE_PROGRESS_INTERVAL``
    (a number; 0 or less: only the lines at each image's or cell's end), else 30."""
    import math
    import os

    raw = os.environ.get("RESTORE_PROGRESS_INTERVAL", "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_PROGRESS_INTERVAL
    return value if math.isfinite(value) else DEFAULT_PROGRESS_INTERVAL


def _hms(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LogTicker:
    """Plain progress lines for a log (stderr not a terminal, not quiet): a line at most every
    :func:`progress_interval` seconds while work goes on, with the time elapsed and an estimate of the
    time left (from the fraction done since the work began: a model's loading does not count)."""

    def __init__(self, on: bool):
        self.on = on
        self.interval = progress_interval()
        self.start = self.last = time.monotonic()
        self.work_start: float | None = None

    def begin_work(self) -> None:
        if self.work_start is None:
            self.work_start = time.monotonic()

    def due(self) -> bool:
        """Whether a periodic line is due now (and, if so, the clock restarts)."""
        now = time.monotonic()
        if not self.on or self.interval <= 0 or now - self.last < self.interval:
            return False
        self.last = now
        return True

    def timing(self, fraction: float) -> str:
        now = time.monotonic()
        text = f"elapsed {_hms(now - self.start)}"
        if self.work_start is not None and 0 < fraction < 1:
            text += f", about {_hms((now - self.work_start) * (1 - fraction) / fraction)} left"
        return text

    def say(self, text: str) -> None:
        self.last = time.monotonic()
        err.print(text, highlight=False, markup=False, soft_wrap=True)


class RichProgress:
    """A transient Rich progress display on stderr (off when quiet or not a terminal); in a log (stderr
    not a terminal), plain progress lines instead (:class:`LogTicker`)."""

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=err, transient=True, disable=quiet or not err.is_terminal)
        self.log = LogTicker(not quiet and not err.is_terminal)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *a):
        self.progress.__exit__(*a)


def say_outcome(record: dict, suffix: str = "") -> None:
    """What happened to one image, in words, on stderr: ``wrote PATH``, or ``failed: INPUT: reason; PATH not
    written`` (a diverged or failed image has no output file)."""
    if record.get("status") == "ok":
        psnr = f" PSNR {record['psnr']:.2f} dB" if record.get("psnr") is not None else ""
        err.print(f"wrote {record['output']}{psnr}{suffix}", highlight=False, markup=False, soft_wrap=True)
        return
    why = record.get("error") or "no reason recorded"
    what = why if record["input"] in why else f"{record['input']}: {why}"  # "cannot read X: ..." names it already
    err.print(f"[red]failed:[/red] {escape(what)}; {escape(record['output'])} not written"
              f"{escape(suffix)}", highlight=False, soft_wrap=True)


class RunProgress(RichProgress):
    """Turns the library's events into a Rich progress bar (stderr), or plain lines in a log."""

    def __init__(self, quiet: bool):
        super().__init__(quiet)
        self.task = None
        self.images = None  # the run's images (every process's, under a launcher)
        self.logged = None
        self.done, self.total, self.batch = 0, 0, []  # images finished and to do; the batch being solved
        self.reported: set[str] = set()  # inputs whose outcome has been printed (print_summary skips them)

    def _fraction(self, step: int = 0, steps: int = 1) -> float:
        return (self.done + len(self.batch) * step / max(1, steps)) / self.total if self.total else 0.0

    def event(self, kind: str, info: dict):
        if kind == "progress":
            self.done, self.total = info["done"], info["total"]
            if self.images is None:
                self.images = self.progress.add_task("images", total=info["total"])
            self.progress.update(self.images, completed=info["done"], total=info["total"])
            # in a log (no terminal) under a launcher, rank 0's own "wrote" lines are only its share: say the total
            if info.get("processes", 1) > 1 and self.log.on and info["done"] != self.logged:
                self.logged = info["done"]
                self.log.say(f"{info['done']}/{info['total']} images done (all processes)")
        elif kind == "model":  # a transient line on a terminal (its download bars follow); an error replaces it
            self.task = self.progress.add_task(f"loading model {escape(info['name'])}", total=None)
            if self.log.on:
                self.log.say(f"loading model {info['name']}")
        elif kind == "batch":
            self.log.begin_work()
            self.batch = info["images"]
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(escape(", ".join(info["images"])[:40]), total=None)
        elif kind == "step":
            if self.task is not None:
                self.progress.update(self.task, completed=info["step"] + 1, total=info["total"])
            if self.log.due():
                first, b = self.done + 1, len(self.batch)
                which = f"image {first}/{self.total}" if b <= 1 else f"images {first}-{first + b - 1}/{self.total}"
                self.log.say(f"{which} ({', '.join(self.batch)[:60]}): step {info['step'] + 1}/{info['total']}, "
                             f"{self.log.timing(self._fraction(info['step'] + 1, info['total']))}")
        elif kind == "image" and not self.quiet:
            r = info["record"]
            self.reported.add(r["input"])
            k = self.done + (self.batch.index(info["stem"]) + 1 if info["stem"] in self.batch else 0)
            timing = f" [{k}/{self.total} done, {self.log.timing(k / self.total)}]" if self.log.on and self.total else ""
            say_outcome(r, timing)


def print_summary(report, quiet: bool, reported: set[str] = frozenset()):
    """The failures not yet said (``reported``: inputs whose outcome a progress line gave) and, unless quiet,
    the run's table."""
    s = report.data["summary"]
    for r in report.data["images"]:
        if r["status"] == "failed" and r["input"] not in reported:
            say_outcome(r)
    if quiet:
        return
    t = Table(title=f"{report.data['config']['task']} - {report.data['config']['method']['name']}"
                    f"{' + DiffStateGrad' if report.data['config']['method']['diffstategrad'] else ''}")
    for col in ("images", "PSNR", "SSIM", "LPIPS", "residual", "NFE", "s/image"):
        t.add_column(col, justify="right")
    fmt = lambda k, d=3: "-" if s[k]["mean"] is None else f"{s[k]['mean']:.{d}f} ± {s[k]['std']:.{d}f}"  # noqa: E731
    n = s["images"]
    counts = (f"{n['ok']} ok, {n['skipped']} skipped, {n['failed']} failed"
              + (f", {n['pending']} pending" if n.get("pending") else ""))
    cells = [fmt("psnr", 2), fmt("ssim"), fmt("lpips"), fmt("residual"), fmt("nfe", 0), fmt("seconds", 1)]
    if not out.is_terminal:  # a log: one plain line, which no width folds
        names = ("PSNR", "SSIM", "LPIPS", "residual", "NFE", "s/image")
        out.print(f"{t.title}: {counts}; " + ", ".join(f"{k} {v}" for k, v in zip(names, cells)), highlight=False,
                  soft_wrap=True)
    else:
        t.add_row(counts, *cells)
        out.print(t)
    out.print(f"metrics: {report.path}", highlight=False)


class BenchProgress(RichProgress):
    """Rich progress for a suite: a bar over cells and one over the current cell's steps; plain lines in a log."""

    def __init__(self, quiet: bool, total: int):
        super().__init__(quiet)
        self.total = total
        self.cells = self.progress.add_task("cells", total=total)
        self.steps = None
        self.cell, self.first = None, None  # the cell running ({"n", "label"}); the index of the first one run

    def _fraction(self, n: float) -> float:
        """The share of the cells to run that is done after ``n`` cells (those before the first run were done before)."""
        first = self.first if self.first is not None else n
        return (n - first) / (self.total - first) if self.total > first else 1.0

    def event(self, kind: str, info: dict):
        if kind == "start":
            if self.steps is not None:
                self.progress.remove_task(self.steps)
            self.steps = self.progress.add_task(escape(info["label"][:60]), total=None)
            self.cell = info
            self.first = info["n"] if self.first is None else self.first
            self.log.begin_work()
        elif kind == "step":
            if self.steps is not None:
                self.progress.update(self.steps, completed=info["step"], total=info["total"])
            if self.cell is not None and self.log.due():
                n = self.cell["n"]
                self.log.say(f"cell {n + 1}/{self.total} ({self.cell['label']}): step {info['step']}/{info['total']}, "
                             f"{self.log.timing(self._fraction(n + info['step'] / max(1, info['total'])))}")
        elif kind == "cell":
            self.progress.update(self.cells, completed=info["n"] + 1)
            self.cell = None
            if self.quiet:
                return
            status = "done" if info["status"] == "ok" else info["status"]
            timing = f" [cell {info['n'] + 1}/{self.total}, {self.log.timing(self._fraction(info['n'] + 1))}]" if self.log.on else ""
            err.print(f"{status}: {info['label']}{timing}", highlight=False, markup=False)


def quiet_warnings() -> None:
    """Python warnings that are not for the user's eyes: tqdm's "rich is experimental" (a TqdmExperimentalWarning
    about the download bars), numpy's "invalid value encountered" (a NaN is refused when read, or recorded in
    words), and the posterior mean's conjugate-gradient note (said per image as a warning line)."""
    import warnings

    warnings.filterwarnings("ignore", message="posterior-mean: conjugate")
    warnings.filterwarnings("ignore", message="rich is experimental")
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            message="(invalid value|overflow|divide by zero) encountered")


def print_rows(title: str, columns: list[str], rows: list[list]) -> None:
    """A listing whose first column holds the names a user types, never cut.

    Not a terminal (a pipe, a file): tab-separated rows under a header line. A terminal: a table whose
    short columns keep their width and long ones fold; where even that does not fit, one block per row.
    """
    if not out.is_terminal:
        for row in [columns, *rows]:
            print("\t".join(" ".join(str(c).split()) for c in row))  # str(Text) is its plain text
        return
    widths = [max(len(str(c)) for c in [col, *(r[i] for r in rows)]) for i, col in enumerate(columns)]
    short = [i == 0 or w <= 14 for i, w in enumerate(widths)]  # the names: never folded
    if sum(w if s else 12 for w, s in zip(widths, short)) + 3 * len(columns) + 1 > out.width:  # + padding, rules
        for row in rows:
            pairs = [Text.assemble(f"{col}: ", c) for col, c in zip(columns[1:], row[1:]) if str(c)]
            out.print(Text(str(row[0]), style="bold"), Padding(Text("; ").join(pairs), (0, 0, 0, 4)))
        return
    t = Table(title=title, box=box.SIMPLE_HEAD)
    for col, w, s in zip(columns, widths, short):
        t.add_column(col, no_wrap=s, min_width=w if s else 12, overflow="fold")
    for row in rows:
        t.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in row))
    out.print(t)
