"""The Fashion-MNIST suite's bars and the merging of result shards (restore_cli.bench.bars and .results, drawn by
`restore bench report`), on hand-made cells whose verdicts are known."""


from restore_cli.bench import bars, results


def cell(task, opts, method, dsg, guidance, psnrs, lpips=0.1, status="ok"):
    label = f"{task}[{','.join(f'{k}={v}' for k, v in opts.items())}] {method}{'+dsg' if dsg else ''} m"
    images = [{"image": f"im{i}", "seed": 0, "psnr": p} for i, p in enumerate(psnrs)]
    finite = [p for p in psnrs if p is not None]
    mean = sum(finite) / len(finite) if finite else None
    return {"config": {"task": task, "task_opts": opts, "method": method, "diffstategrad": dsg,
                       "guidance": guidance},
            "label": label + (f" (guidance x{guidance:g})" if guidance != 1.0 else ""), "status": status,
            "images": images,
            "summary": {"psnr": {"mean": mean}, "lpips": {"mean": lpips},
                        "failure_rate": sum(p is None or p < 15 for p in psnrs) / len(psnrs)}}


def data(*cs):
    return {"cells": {str(i): c for i, c in enumerate(cs)}}


def grid(task, opts, method, x1, x1_dsg, x10, x10_dsg):
    return [cell(task, opts, method, False, 1.0, x1), cell(task, opts, method, True, 1.0, x1_dsg),
            cell(task, opts, method, False, 10.0, x10), cell(task, opts, method, True, 10.0, x10_dsg)]


def test_bar2_is_met_when_dsg_loses_less_and_missed_when_it_loses_more():
    box = {"mask": "box"}
    d = data(*grid("inpaint", box, "psld", [20, 22], [20, 22], [17, 19], [19, 21]))  # lose 3 dB vs 1 dB
    r = bars.robustness(d, "inpaint[mask=box]", "psld", 10.0)
    assert r["ok"] and r["without"] == "+3.00 dB" and r["with"] == "+1.00 dB"
    # paired: per image (1 - 3) = -2 on both images, so the mean is -2 with no spread
    assert r["paired"] == (-2.0, 0.0, 2)
    d = data(*grid("inpaint", box, "dps", [20, 22], [20, 22], [19, 21], [17, 19]))
    assert not bars.robustness(d, "inpaint[mask=box]", "dps", 10.0)["ok"]


def test_bar2_a_diverged_variant_never_meets_the_bar():
    opts = {"mask": "random"}
    d = data(*grid("inpaint", opts, "daps", [20, 20], [20, 20], [None, None], [None, None]))
    r = bars.robustness(d, "inpaint[mask=random]", "daps", 10.0)
    assert not r["ok"] and "diverged" in r["with"] and "diverged" in r["without"]
    # without DSG diverged, with DSG finite: met
    d = data(*grid("inpaint", opts, "daps", [20, 20], [20, 20], [None, None], [18, 18]))
    assert bars.robustness(d, "inpaint[mask=random]", "daps", 10.0)["ok"]


def test_bar2_waits_for_all_four_cells_and_keeps_tasks_apart():
    blur = {"kernel": "motion"}
    cs = grid("deblur", blur, "dps", [20], [20], [18], [19])
    assert bars.robustness(data(*cs[:3]), "deblur[kernel=motion]", "dps", 10.0) is None
    other = grid("deblur", {"kernel": "gaussian"}, "dps", [30], [30], [10], [29])
    d = data(*cs, *other)
    assert bars.robustness(d, "deblur[kernel=motion]", "dps", 10.0)["without"] == "+2.00 dB"
    table = "\n".join(bars.bar2_every_task(d))
    assert "met in 2 of 2 measured" in table and "deblur[kernel=gaussian]" in table


def test_bars_read_the_default_cells_not_a_sweep_point():
    box = {"mask": "box"}
    swept = cell("inpaint", box, "dps", True, 1.0, [5])
    swept["config"]["dsg_opts"] = {"var_cutoff": 0.5}
    d = data(swept, *grid("inpaint", box, "dps", [20], [20], [19], [19.5]))
    assert bars.robustness(d, "inpaint[mask=box]", "dps", 10.0)["with"] == "+0.50 dB"
    # a suite comparing rank rules names the default one: that cell is the default, the other a sweep point
    g = grid("inpaint", box, "psld", [20], [20], [19], [19.5])
    for c in g[1::2]:
        c["config"]["dsg_opts"] = {"rank_mode": "channels"}
    paper = [dict(c, config={**c["config"], "dsg_opts": {"rank_mode": "paper"}}) for c in g[1::2]]
    for c in paper:
        c["summary"] = {**c["summary"], "psnr": {"mean": 1.0}}
    d = data(*paper, *g)
    assert bars.robustness(d, "inpaint[mask=box]", "psld", 10.0)["with"] == "+0.50 dB"
    assert bars.robustness(data(*paper, *g[::2]), "inpaint[mask=box]", "psld", 10.0) is None


def test_bar1_compares_lpips_with_the_posterior_mean():
    box = {"mask": "box"}
    d = data(cell("inpaint", box, "posterior-mean", False, 1.0, [15], lpips=0.2),
             cell("inpaint", box, "dps", False, 1.0, [20], lpips=0.1),
             cell("inpaint", box, "dps", True, 1.0, [20], lpips=0.3))
    text = "\n".join(bars.bars(d))
    assert "dps: LPIPS 0.100 vs 0.200 -> met" in text
    assert "dps + DSG: LPIPS 0.300 vs 0.200 -> **missed**" in text


def test_a_method_that_does_not_support_a_task_is_no_cell_to_wait_for():
    hdr = {}
    cs = grid("hdr", hdr, "dps", [20], [20], [18], [19])
    unsupported = [cell("hdr", hdr, "psld", d, g, [20], status="skipped")
                   for d in (False, True) for g in (1.0, 10.0)]
    table = "\n".join(bars.bar2_every_task(data(*cs, *unsupported)))
    assert "met in 1 of 1 measured" in table
    assert "psld" not in table and "not measured yet" not in table
    # while one of the method's cells has not run, the row waits for it
    table = "\n".join(bars.bar2_every_task(data(*cs[:3])))
    assert "| hdr[] | dps x10 | - | - | - | not measured yet |" in table


def test_shards_merge_to_the_finished_and_then_the_newer_cell():
    """Shards of one suite: ok over failed, a rerun (later ``finished``) over the earlier result, and a
    cell from before ``finished`` was recorded counts as the oldest."""
    def c(status, psnr, finished=None):
        x = cell("inpaint", {"mask": "box"}, "dps", False, 1.0, [psnr], status=status)
        return {**x, **({"finished": finished} if finished else {})}

    suite = list("abc")  # the cells' keys in the suite's order
    old = {"started": "t", "cells": {"a": c("ok", 10), "b": c("ok", 11, "2026-12-01T00:00:00+00:00"),
                                     "c": c("failed", 0)}}
    new = {"started": "t", "cells": {"a": c("ok", 20, "2026-12-02T00:00:00"),  # no zone: UTC
                                     "b": c("ok", 21, "2026-11-30T00:00:00+00:00"), "c": c("ok", 22)}}
    m = results.merge([old, new], suite)["cells"]
    assert [m[k]["summary"]["psnr"]["mean"] for k in "abc"] == [20, 11, 22]
    m = results.merge([new, old], suite)["cells"]
    assert [m[k]["summary"]["psnr"]["mean"] for k in "abc"] == [20, 11, 22]


def test_merge_prefers_a_cell_of_the_methods_current_revision():
    """A newer cell made by an earlier revision of its method loses to an older one made by the current
    revision; the table marks an outdated cell that is all there is."""
    from restore_cli.bench.results import current_revision

    rev = current_revision("resample", "inpaint")
    assert rev >= 2  # ReSample's defaults changed (tweedie, dsg_stages) since its first cells

    def c(psnr, finished, revision=None):
        x = cell("inpaint", {"mask": "box"}, "resample", False, 1.0, [psnr])
        return {**x, "finished": finished, **({"method_revision": revision} if revision else {})}

    suite = ["a"]
    current = {"started": "t", "cells": {"a": c(20, "2026-12-01T00:00:00+00:00", rev)}}
    stale = {"started": "t", "cells": {"a": c(10, "2026-12-05T00:00:00+00:00")}}  # none recorded: 1
    for order in ([current, stale], [stale, current]):
        assert results.merge(order, suite)["cells"]["a"]["summary"]["psnr"]["mean"] == 20
    assert results.outdated(stale["cells"]["a"]) and not results.outdated(current["cells"]["a"])
    # the DPS phase-retrieval fix is on that task only
    assert current_revision("dps", "phase-retrieval") > current_revision("dps", "inpaint") == 1
    assert current_revision("dps", "phase-retrieval", "latent") == current_revision("latent-dps", "phase-retrieval") == 1


def test_merge_keeps_the_suites_order_of_every_files_cells():
    def c(psnr):
        return cell("inpaint", {"mask": "box"}, "dps", False, 1.0, [psnr])

    a = {"started": "2026-01-02", "finished": "2026-01-03", "cells": {"x": c(1), "z": c(3)}}
    b = {"started": "2026-01-01", "finished": None, "cells": {"y": c(2), "z": c(4)}}
    m = results.merge([a, b])
    assert list(m["cells"]) == ["x", "z", "y"] and m["started"] == "2026-01-01" and m["finished"] is None
    assert list(results.merge([a, b], ["x", "y", "z"])["cells"]) == ["x", "y", "z"]


def test_the_bars_are_in_a_report_of_a_suite_that_has_their_cells():
    box = {"mask": "box"}
    d = data(cell("inpaint", box, "posterior-mean", False, 1.0, [15], lpips=0.2),
             *grid("inpaint", box, "dps", [20], [20], [19], [19.5]))
    assert bars.has_bars(d)
    assert not bars.has_bars(data(*grid("inpaint", box, "dps", [20], [20], [19], [19.5])))
