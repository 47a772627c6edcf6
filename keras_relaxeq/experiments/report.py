"""The report of a comparison: statistics over seeds, relaxed vs standard per seed, the tables.

:func:`aggregate` reads the finished runs of a :class:`~keras_relaxeq.experiments.plan.Comparison`
and writes ``comparison.json``, ``comparison.md`` (mean and sample std per arm and sweep value) and
``comparison.png`` (:mod:`keras_relaxeq.experiments.plots`); a sweep writes ``comparison_<option>.*``.
"""

from __future__ import annotations

import json
import math

from keras_relaxeq.experiments.plan import (
    Comparison,
    Experiment,
    Metric,
    epochs_of,
    output_stem,
    parse_sweep,
    report_dir,
    run_dirs,
    run_progress,
    selected_epochs,
)
from keras_relaxeq.experiments.records import load_summary, read_log, read_relaxation


def task_loss(history: dict, config: dict) -> list[float]:
    """The training loss without the relaxation penalties, per epoch.

    ``loss`` in ``log.csv`` is what ``RelaxedModel`` minimises: the task loss plus
    ``lambda_lie * lie_penalty + lambda_proj * projection_penalty`` (times theta with
    ``penalty_scale="theta"``), with both penalties logged as epoch means; subtracting the
    penalty gives the epoch mean of the task loss (exact when the batches of an epoch have equal
    size, as in the SEGNN recipe, and theta is constant within the epoch).  Standard runs log no
    penalty: their loss is the task loss.
    """
    loss = history.get("loss", [])
    lie, proj = history.get("lie_penalty"), history.get("projection_penalty")
    if lie is None or proj is None:
        return list(loss)
    theta = history.get("theta") if config.get("penalty_scale") == "theta" else None
    out = []
    for i, value in enumerate(loss):
        penalty = config.get("lambda_lie", 0.0) * lie[i] + config.get("lambda_proj", 0.0) * proj[i]
        out.append(value - penalty * (theta[i] if theta is not None else 1.0))
    return out


def _direction(signed) -> dict:
    """The median of the signed ``relaxed / standard - 1`` and the share of epochs where the
    relaxed curve is lower (about 0 and 50% when the arms differ only by noise)."""
    import numpy as np

    signed = signed[~np.isnan(signed)]
    if not signed.size:
        return {"epochs": 0, "signed_median": None, "relaxed_lower": None}
    return {
        "epochs": int(signed.size),
        "signed_median": float(np.median(signed)),
        "relaxed_lower": float(np.mean(signed < 0)),
    }


def paired_curves(by_seed: dict, key: str, selected: dict | None = None, baseline: str = "standard") -> list[dict]:
    """How far apart the two arms' per-epoch ``key`` curves are, per seed (and sweep value) where
    both arms have finished: quantiles of ``|relaxed / standard - 1|`` over the common epochs.
    The same seed gives both arms the same initial weights and batches, so this measures how
    much the relaxation moves the trajectory. Its direction: the median of the signed
    ``relaxed / standard - 1`` and the share of epochs where the relaxed curve is lower (about
    0 and 50% when the arms differ only by noise).

    ``selected`` maps ``(value, arm, seed)`` to the run's selected (1-based) epoch. With both arms'
    epochs known, the direction is also given separately for epochs ``1..s`` and ``s+1..end``,
    ``s`` the later of the two: whether a direction arises before the models are selected (and
    so can reach the reported metric) or only after."""
    import numpy as np

    selected = selected or {}
    out = []
    for (value, arm, seed), relaxed in by_seed.items():  # filled in the jobs' order: sweep value, then seed
        standard = by_seed.get((value, baseline, seed))
        if arm != "relaxed" or standard is None:
            continue
        n = min(len(relaxed.get(key, [])), len(standard.get(key, [])))
        if not n:
            continue
        signed = np.asarray(relaxed[key][:n]) / np.asarray(standard[key][:n]) - 1.0
        diff = np.abs(signed[~np.isnan(signed)])
        direction = _direction(signed)
        pair = {
            "sweep_value": value,
            "seed": seed,
            "epochs": n,  # no finite epoch (a diverged run): None
            "median": float(np.median(diff)) if diff.size else None,
            "p90": float(np.percentile(diff, 90)) if diff.size else None,
            "max": float(np.max(diff)) if diff.size else None,
            "signed_median": direction["signed_median"],
            "relaxed_lower": direction["relaxed_lower"],
        }
        picks = [selected.get((value, a, seed)) for a in ("relaxed", baseline)]
        if all(isinstance(e, int) and e > 0 for e in picks):
            split = min(max(picks), n)
            pair.update(
                split_epoch=split, to_selection=_direction(signed[:split]), after_selection=_direction(signed[split:])
            )
        out.append(pair)
    return out


def paired_metric(runs: list[dict], metric: Metric, baseline: str = "standard") -> list[dict]:
    """The headline metric of the two arms side by side, per seed (and sweep value) where both
    have finished: ``relaxed - standard`` and ``relaxed / standard - 1``."""
    finished = {
        (r["sweep_value"], r["arm"], r["seed"]): r[metric.key]
        for r in runs
        if r.get("finished") and r.get(metric.key) is not None
    }
    out = []
    for (value, arm, seed), relaxed in finished.items():
        standard = finished.get((value, baseline, seed))
        if arm != "relaxed" or standard is None:
            continue
        out.append(
            {
                "sweep_value": value,
                "seed": seed,
                "relaxed": relaxed,
                "standard": standard,
                "difference": relaxed - standard,
                "relative": relaxed / standard - 1.0 if standard else float("nan"),
            }
        )
    return out


def _get(summary: dict, dotted: str):
    """The number at the dotted key of ``summary``, or None."""
    value = summary
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) else None


def mean_std(values):
    """Mean, sample standard deviation and count of the finite values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    m = sum(vals) / len(vals)
    # the sample standard deviation is undefined for one run (None: the tables print the mean alone)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return {"mean": m, "std": s, "n": len(vals)}


def aggregate(args: Comparison) -> dict:
    """Reads the runs of ``args`` and writes the report (json, md, png) into :func:`report_dir`.

    Finished runs enter the statistics and the curves; a run without a summary shows its logged
    epochs (and is drawn dashed without a sweep), never aggregated.  Returns the report's content
    (``comparison.json``) with ``figure_panels``, the titles of the figure's panels.
    """
    exp = args.spec
    sweep_name, _ = parse_sweep(args.sweep)
    metrics = (exp.metric, *exp.extra_metrics)
    runs, curves, by_seed, partial = [], {}, {}, {}
    for arm, seed, value, d in run_dirs(args):
        summary = load_summary(d)
        row = {"arm": arm, "seed": seed, "sweep_value": value, "run": d.name}
        if summary is None:  # not started, or running / killed before its first summary
            history = read_log(d / "log.csv") if (d / "log.csv").exists() else {}
            if history.get("epoch"):
                row["epochs_logged"] = len(history["epoch"])
                partial.setdefault((value, arm), []).append(history)  # drawn, never aggregated
            runs.append(dict(row, finished=False))
            continue
        row.update(
            finished=summary.get("epochs_run", 0) >= epochs_of(args),
            epochs=summary.get("epochs_run"),
            best_epoch=summary.get("best_epoch"),
            wall_time_minutes=summary.get("wall_time_seconds", float("nan")) / 60,
            command=(d / "command.txt").read_text().strip() if (d / "command.txt").exists() else None,
        )
        row.update({m.key: _get(summary, m.key) for m in metrics})
        runs.append(row)
        if row["finished"]:
            history = read_log(d / "log.csv")
            history["task_loss"] = task_loss(history, summary.get("config", {}))
            history["relaxation"] = read_relaxation(d / "relaxation.csv")
            curves.setdefault((value, arm), []).append(history)
            by_seed[(value, arm, seed)] = history
    selected = selected_epochs(runs)
    groups = []
    for value in parse_sweep(args.sweep)[1]:
        for arm in args.arms:
            done = [r for r in runs if r["arm"] == arm and r["sweep_value"] == value and r["finished"]]
            stats = {m.key: mean_std(r[m.key] for r in done) for m in metrics}
            stats["wall_time_minutes"] = mean_std(r["wall_time_minutes"] for r in done)
            groups.append({"arm": arm, "sweep_value": value, "runs": len(done), "stats": stats})
    result = {
        "experiment": args.experiment,
        "sweep": sweep_name,
        "protocol": {
            "script": exp.script,
            "options": list(exp.protocol),
            "epochs": epochs_of(args),
            "seeds": args.seeds,
            "extra": list(args.extra),
        },
        "metric": exp.metric.key,
        "higher_is_better": exp.higher_is_better,
        "groups": groups,
        "runs": runs,
        "paired_metric": paired_metric(runs, exp.metric, exp.baseline_arm),
        "paired_curves": paired_curves(by_seed, exp.curve, selected, exp.baseline_arm),
    }
    stem = output_stem(sweep_name)
    report = report_dir(args)
    report.mkdir(parents=True, exist_ok=True)
    (report / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (report / f"{stem}.md").write_text(markdown(result, exp))
    from keras_relaxeq.experiments.plots import plot, plot_sweep

    if sweep_name:
        result["figure_panels"] = plot_sweep(curves, result, exp, report / f"{stem}.png")
    else:
        result["figure_panels"] = plot(curves, result, exp, report / f"{stem}.png", partial=partial)
    return result


def _fmt(value, m: Metric):
    """One value as the tables show it (n/a for None)."""
    if value is None:
        return "n/a"
    if m.digits < 0:
        return f"{value:.1e}"
    return f"{value * m.scale:.{m.digits}f}"


def _fmt_ms(stats, m: Metric):
    """Mean ± sample std as the tables show it (the mean alone for one run, n/a for none)."""
    if stats["mean"] is None:
        return "n/a"
    if m.digits < 0:
        return f"{stats['mean']:.1e}"
    if stats["std"] is None:
        return f"{stats['mean'] * m.scale:.{m.digits}f}"
    return f"{stats['mean'] * m.scale:.{m.digits}f} ± {stats['std'] * m.scale:.{m.digits}f}"


def _direction_cells(d: dict) -> list[str]:
    """Signed median and share of epochs with the relaxed curve lower, or n/a (no finite epochs)."""
    if d["signed_median"] is None:
        return ["n/a", "n/a"]
    return [f"{100 * d['signed_median']:+.2f}%", f"{100 * d['relaxed_lower']:.0f}%"]


def markdown(result, exp: Experiment) -> str:
    """The tables of ``comparison.md``: per arm (and sweep value), per run, and relaxed vs standard per seed."""
    metrics = (exp.metric, *exp.extra_metrics)
    sweep = result["sweep"]
    head = ([sweep] if sweep else []) + ["arm", "runs"] + [m.label for m in metrics] + ["minutes (last invocation)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    minutes = Metric("wall_time_minutes", "", 1.0, 0)
    for g in result["groups"]:
        cells = ([str(g["sweep_value"])] if sweep else []) + [g["arm"], str(g["runs"])]
        cells += [_fmt_ms(g["stats"][m.key], m) for m in metrics] + [_fmt_ms(g["stats"]["wall_time_minutes"], minutes)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample standard deviation over the finished seeds (the mean alone for one run). Per run:", ""]
    head = ([sweep] if sweep else []) + ["arm", "seed", "epochs"] + [m.label for m in metrics]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["runs"]:
        cells = ([str(r["sweep_value"])] if sweep else []) + [r["arm"], str(r["seed"])]
        if "epochs" not in r:
            progress = run_progress(r, result["protocol"]["epochs"])
            cells += [f"in progress: {progress}" if r.get("epochs_logged") else progress] + [""] * len(metrics)
        else:
            cells += [f"{r['epochs']}" + ("" if r["finished"] else " (unfinished)")]
            cells += [_fmt(r[m.key], m) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    pairs = result.get("paired_metric") or []
    if pairs:
        m = exp.metric
        base = exp.baseline_arm
        lines += ["", f"Relaxed vs {base}, per seed (both finished): {m.label}:", ""]
        head = ([sweep] if sweep else []) + [
            "seed",
            "relaxed",
            base,
            f"relaxed - {base}",
            f"relaxed / {base} - 1",
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in pairs:
            cells = ([str(p["sweep_value"])] if sweep else []) + [str(p["seed"])]
            cells += [
                _fmt(p["relaxed"], m),
                _fmt(p["standard"], m),
                f"{p['difference'] * m.scale:+.{max(m.digits, 0)}f}",
                f"{100 * p['relative']:+.1f}%",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    pairs = result.get("paired_curves") or []
    if pairs:
        lines += [
            "",
            f"Relaxed vs {exp.baseline_arm} at the same epoch, per seed (both finished): "
            f"|relaxed / {exp.baseline_arm} - 1| of "
            f"the {exp.curve_label} over the epochs (median, 90th percentile, max), the median of the "
            f"signed relaxed / {exp.baseline_arm} - 1, and the share of epochs where the relaxed curve is lower:",
            "",
        ]
        head = ([sweep] if sweep else []) + [
            "seed",
            "epochs",
            "median",
            "90th percentile",
            "max",
            "signed median",
            "relaxed lower",
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in pairs:
            cells = ([str(p["sweep_value"])] if sweep else []) + [str(p["seed"]), str(p["epochs"])]
            cells += ["n/a" if p[k] is None else f"{100 * p[k]:.2f}%" for k in ("median", "p90", "max")]
            cells += _direction_cells(p)
            lines.append("| " + " | ".join(cells) + " |")
        split = [p for p in pairs if "split_epoch" in p]
        if split:
            lines += [
                "",
                "The direction up to the selected epochs and after them: signed median and share of epochs "
                "with the relaxed curve lower over epochs 1..s and s+1..end, s the later of the two arms' "
                "selected epochs:",
                "",
            ]
            head = ([sweep] if sweep else []) + [
                "seed",
                "s",
                "signed median to s",
                "relaxed lower to s",
                "signed median after s",
                "relaxed lower after s",
            ]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for p in split:
                cells = ([str(p["sweep_value"])] if sweep else []) + [str(p["seed"]), str(p["split_epoch"])]
                cells += _direction_cells(p["to_selection"]) + _direction_cells(p["after_selection"])
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
