"""Terminal output of the ``restore`` command: the two Rich consoles, progress displays for a run
and for a suite, the run's summary table, and the one-line usage error."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

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


class RichProgress:
    """A transient Rich progress display on stderr (off when quiet or not a terminal)."""

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=err, transient=True, disable=quiet or not err.is_terminal)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *a):
        self.progress.__exit__(*a)


class RunProgress(RichProgress):
    """Turns the library's events into a Rich progress bar (stderr)."""

    def __init__(self, quiet: bool):
        super().__init__(quiet)
        self.task = None
        self.images = None  # the run's images (every process's, under a launcher)
        self.logged = None

    def event(self, kind: str, info: dict):
        if kind == "progress":
            if self.images is None:
                self.images = self.progress.add_task("images", total=info["total"])
            self.progress.update(self.images, completed=info["done"], total=info["total"])
            # in a log (no terminal) under a launcher, rank 0's own "wrote" lines are only its share: say the total
            if info.get("processes", 1) > 1 and not self.quiet and not err.is_terminal and info["done"] != self.logged:
                self.logged = info["done"]
                err.print(f"{info['done']}/{info['total']} images done (all processes)", highlight=False)
        elif kind == "model":  # a transient line on a terminal (its download bars follow); an error replaces it
            self.task = self.progress.add_task(f"loading model {escape(info['name'])}", total=None)
        elif kind == "batch":
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(escape(", ".join(info["images"])[:40]), total=None)
        elif kind == "step" and self.task is not None:
            self.progress.update(self.task, completed=info["step"] + 1, total=info["total"])
        elif kind == "image" and not self.quiet:
            r = info["record"]
            extra = f" PSNR {r['psnr']:.2f} dB" if r.get("psnr") is not None else ""
            err.print(f"wrote {r['output']}{extra}", highlight=False)


def print_summary(report, quiet: bool):
    s = report.data["summary"]
    failed = [r for r in report.data["images"] if r["status"] == "failed"]
    for r in failed:
        err.print(f"[red]failed:[/red] {r['input']}: {r['error']}", highlight=False, soft_wrap=True)
    if quiet:
        return
    t = Table(title=f"{report.data['config']['task']} - {report.data['config']['method']['name']}"
                    f"{' + DiffStateGrad' if report.data['config']['method']['diffstategrad'] else ''}")
    for col in ("images", "PSNR", "SSIM", "LPIPS", "residual", "NFE", "s/image"):
        t.add_column(col, justify="right")
    fmt = lambda k, d=3: "-" if s[k]["mean"] is None else f"{s[k]['mean']:.{d}f} ± {s[k]['std']:.{d}f}"  # noqa: E731
    n = s["images"]
    t.add_row(f"{n['ok']} ok, {n['skipped']} skipped, {n['failed']} failed"
              + (f", {n['pending']} pending" if n.get("pending") else ""), fmt("psnr", 2), fmt("ssim"), fmt("lpips"),
              fmt("residual"), fmt("nfe", 0), fmt("seconds", 1))
    out.print(t)
    out.print(f"metrics: {report.path}", highlight=False)


class BenchProgress(RichProgress):
    """Rich progress for a suite: a bar over cells and one over the current cell's steps."""

    def __init__(self, quiet: bool, total: int):
        super().__init__(quiet)
        self.cells = self.progress.add_task("cells", total=total)
        self.steps = None

    def event(self, kind: str, info: dict):
        if kind == "start":
            if self.steps is not None:
                self.progress.remove_task(self.steps)
            from rich.markup import escape

            self.steps = self.progress.add_task(escape(info["label"][:60]), total=None)
        elif kind == "step" and self.steps is not None:
            self.progress.update(self.steps, completed=info["step"], total=info["total"])
        elif kind == "cell":
            self.progress.update(self.cells, completed=info["n"] + 1)
            if not self.quiet and info["status"] not in ("ok",):
                err.print(f"{info['status']}: {info['label']}", highlight=False, markup=False)
            elif not self.quiet:
                err.print(f"done: {info['label']}", highlight=False, markup=False)
