"""Figures of a comparison (matplotlib is imported when a figure is drawn, with the Agg backend).

:func:`plot` draws a comparison without a sweep (per-epoch curves, theta, branch size);
:func:`plot_sweep` draws a sweep (the headline metric against the sweep value, relaxed / standard - 1
per seed, the branch size per value, and one curve panel per value).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from keras_relaxeq.experiments.plan import Experiment, run_progress, selected_epochs

#: line colour of each arm in the figures
ARM_COLORS = {"relaxed": "tab:red", "standard": "tab:blue"}


def arm_colors(exp: Experiment) -> dict:
    """A colour per arm of ``exp``: :data:`ARM_COLORS` for relaxed / standard, the other arms the next colours of
    matplotlib's cycle that no arm uses yet (five arms get five colours)."""
    taken = {ARM_COLORS[arm] for arm in exp.arms if arm in ARM_COLORS}
    free = (
        c
        for c in (
            f"tab:{n}" for n in ("blue", "orange", "green", "red", "purple", "brown", "pink", "gray", "olive", "cyan")
        )
        if c not in taken
    )
    return {arm: ARM_COLORS[arm] if arm in ARM_COLORS else next(free) for arm in exp.arms}


def _title(result, exp: Experiment) -> str:
    """``relaxed vs standard`` (or ``relaxed vs <baseline>, <other arms>``) for the figure titles."""
    others = [a for a in exp.arms if a not in ("relaxed", exp.baseline_arm)]
    return f"relaxed vs {exp.baseline_arm}" + "".join(f", {a}" for a in others)


def _stacked(logs, key):
    """The runs' per-epoch ``key`` curves as one array ``[runs, common epochs]``, or None."""
    import numpy as np

    rows = [np.asarray(log[key], dtype=float) for log in logs if key and log.get(key)]
    if not rows:
        return None
    n = min(len(r) for r in rows)
    return np.stack([r[:n] for r in rows])


def _branch_size(logs):
    """The branch size ``||theta R(x)|| / ||E(x)||`` the runs logged (``relaxation.csv``), mean over
    the runs at their common epochs: ``(epochs counted from 1, values, number of runs)``, or None."""
    import numpy as np

    series = [
        dict(zip(log["relaxation"]["epoch"], log["relaxation"]["relative"]))
        for log in logs
        if log.get("relaxation", {}).get("epoch")
    ]
    common = sorted(set.intersection(*map(set, series))) if series else []
    if not common:
        return None
    return np.asarray(common) + 1, [np.mean([by_epoch[e] for by_epoch in series]) for e in common], len(series)


def plot(curves, result, exp: Experiment, path: Path, partial=None) -> list[str]:
    """Writes the figure of a comparison without a sweep (``plot_sweep`` draws sweeps); returns the
    panel titles: the per-epoch curve and training curve (each seed thin, the mean thick), theta,
    and the branch size when the relaxed runs logged it.  ``partial``: the logs of runs still in
    progress, ``{(sweep value, arm): [history, ...]}``, drawn dashed with their epochs so far (a long
    run shows its learning curve before it ends; they enter no statistic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = arm_colors(exp)
    panels = [(exp.curve, exp.curve_label)]
    if exp.train_curve:
        panels.append((exp.train_curve, exp.train_curve_label or f"train {exp.train_curve}"))
    monitored = any(log.get("relaxation", {}).get("epoch") for logs in curves.values() for log in logs)
    ncols = len(panels) + 1 + (1 if monitored else 0)
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4))
    for (_, arm), logs in sorted(curves.items(), key=lambda kv: kv[0][1]):
        for (key, label), ax in zip(panels, axes):
            data = _stacked(logs, key)
            if data is None:
                continue
            epochs = np.arange(1, data.shape[1] + 1)
            for r in data:
                ax.plot(epochs, r, color=colors[arm], alpha=0.25, lw=0.8)
            ax.plot(epochs, data.mean(0), color=colors[arm], lw=2, label=f"{arm} (mean of {len(data)})")
            ax.set_title(label)
            ax.set_xlabel("epoch")
            if exp.log_scale:
                ax.set_yscale("log")
        thetas = [log.get("theta") for log in logs if log.get("theta")]
        if thetas and arm == "relaxed":
            axes[len(panels)].plot(np.arange(1, len(thetas[0]) + 1), thetas[0], color=colors[arm], label="theta")
        # how large the branches were (recipes' RelaxationMonitor)
        size = _branch_size(logs)
        if size is not None:
            epochs, mean, runs = size
            axes[len(panels) + 1].plot(epochs, mean, color=colors[arm], marker=".", label=f"{arm} (mean of {runs})")
    for (_, arm), logs in sorted((partial or {}).items(), key=lambda kv: kv[0][1]):
        for (key, label), ax in zip(panels, axes):
            for log in logs:
                if key and log.get(key):
                    values = log[key]
                    ax.plot(
                        np.arange(1, len(values) + 1),
                        values,
                        color=colors[arm],
                        ls="--",
                        marker="o",
                        ms=3,
                        label=f"{arm} (in progress, {len(values)} epochs)",
                    )
                    ax.set_title(label)
                    ax.set_xlabel("epoch")
        if arm == "relaxed" and not any(log.get("theta") for log in curves.get((_, arm), [])):
            thetas = [log.get("theta") for log in logs if log.get("theta")]
            if thetas:
                axes[len(panels)].plot(
                    np.arange(1, len(thetas[0]) + 1),
                    thetas[0],
                    color=colors[arm],
                    ls="--",
                    marker="o",
                    ms=3,
                    label="theta (in progress)",
                )
    axes[len(panels)].set_title("theta at the end of each epoch")
    axes[len(panels)].set_xlabel("epoch")
    if monitored:
        if any(np.any(line.get_ydata() > 0) for line in axes[len(panels) + 1].get_lines()):
            axes[len(panels) + 1].set_yscale("log")  # (a run too short for theta > 0 logs zeros only)
        axes[len(panels) + 1].set_title("||theta R(x)|| / ||E(x)|| (rms, all branches)")
        axes[len(panels) + 1].set_xlabel("epoch")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{result['experiment']}: {_title(result, exp)}, {result['protocol']['epochs']} epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    titles = [ax.get_title() for ax in axes]
    plt.close(fig)
    return titles


def _metric_vs_value(ax, result, exp: Experiment, position: dict, colors: dict) -> None:
    """The headline metric against the sweep value, one line per arm (mean ± std over seeds)."""
    m = exp.metric
    for arm, color in colors.items():
        gs = [g for g in result["groups"] if g["arm"] == arm and g["stats"][m.key]["mean"] is not None]
        if gs:
            ax.errorbar(
                [position[g["sweep_value"]] for g in gs],
                [g["stats"][m.key]["mean"] * m.scale for g in gs],
                yerr=[(g["stats"][m.key]["std"] or 0.0) * m.scale for g in gs],
                color=color,
                marker="o",
                capsize=3,
                label=arm,
            )
    ax.set_title(textwrap.fill(m.label, 40), fontsize=10)


def _sweep_axis(ax, result, exp: Experiment, position: dict) -> None:
    """x axis of a metric-vs-sweep-value panel: ticks at the values; log scale for 1,000-10,000."""
    ax.set_xlabel(result["sweep"])
    numeric = all(isinstance(x, float) for x in position.values())
    ticks = list(position.values())
    if numeric and exp.log_scale and min(ticks) > 0 and max(ticks) >= 10 * min(ticks):
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(ticks, [str(v) for v in position])
    if not numeric:  # categorical values (e.g. centring)
        ax.set_xlim(-0.5, len(position) - 0.5)


def plot_sweep(curves, result, exp: Experiment, path: Path) -> list[str]:
    """The figure of a sweep; returns the panel titles.

    Top row: the headline metric against the sweep value for both arms; the per-seed
    ``relaxed / standard - 1`` of it; and, when the relaxed runs logged it, the size of the
    branches over the epochs, one line per value.  Bottom row: one panel per sweep value with both
    arms' per-epoch curve (the training curve thin) and the selected epochs marked, on shared axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = arm_colors(exp)
    values = parse_sweep_values(result)
    position = sweep_positions(values)
    monitored = any(log.get("relaxation", {}).get("epoch") for logs in curves.values() for log in logs)
    ncols = max(len(values), 3 if monitored else 2)
    fig = plt.figure(figsize=(4.5 * ncols, 8.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, hspace=0.05)
    upper = top.subplots(1, 3 if monitored else 2)
    lower = np.atleast_1d(bottom.subplots(1, len(values), sharey=True))

    _metric_vs_value(upper[0], result, exp, position, colors)
    _sweep_axis(upper[0], result, exp, position)

    ax = upper[1]
    pairs = result.get("paired_metric") or []
    ax.axhline(0.0, color="0.5", lw=1)
    if pairs:
        xs = [position[p["sweep_value"]] for p in pairs]
        ax.scatter(xs, [100 * p["relative"] for p in pairs], color="k", s=18, label="one seed")
        by_value = {}
        for p in pairs:
            by_value.setdefault(p["sweep_value"], []).append(100 * p["relative"])
        vs = [v for v in values if v in by_value]
        ax.plot(
            [position[v] for v in vs], [np.mean(by_value[v]) for v in vs], color="k", lw=1.5, label="mean over seeds"
        )
    better = "higher" if result["higher_is_better"] else "lower"
    ax.set_title(
        textwrap.fill(f"relaxed / standard - 1 of that metric, % ({better}: relaxed is better)", 40), fontsize=10
    )
    _sweep_axis(ax, result, exp, position)

    if monitored:
        ax = upper[2]
        cmap = plt.get_cmap("viridis")
        for i, value in enumerate(values):
            size = _branch_size(curves.get((value, "relaxed"), []))
            if size is not None:
                ax.plot(
                    *size[:2],
                    marker=".",
                    ms=3,
                    color=cmap(i / max(1, len(values) - 1)),
                    label=f"{result['sweep']}={value}",
                )
        if any(np.any(line.get_ydata() > 0) for line in ax.get_lines()):
            ax.set_yscale("log")
        ax.set_title(textwrap.fill("relaxed runs: ||theta R(x)|| / ||E(x)|| (rms, all branches)", 40), fontsize=10)
        ax.set_xlabel("epoch")

    best = selected_epochs(result["runs"])
    markers = {"relaxed": "v", "standard": "^"}  # distinct, so that two arms selecting one epoch both show
    for ax, value in zip(lower, values):
        for arm, color in colors.items():
            logs = curves.get((value, arm), [])
            for key, lw, alpha in ((exp.curve, 1.5, 1.0), (exp.train_curve, 0.7, 0.5)):
                data = _stacked(logs, key)
                if data is None:
                    continue
                n, mean = data.shape[1], data.mean(0)
                name = exp.curve_label if key == exp.curve else "train"
                ax.plot(
                    np.arange(1, n + 1),
                    mean,
                    color=color,
                    lw=lw,
                    alpha=alpha,
                    label=f"{arm}, {name}" + (f" (mean of {len(data)})" if len(data) > 1 else ""),
                )
                if key == exp.curve:
                    for (v, a, _seed), epoch in best.items():
                        if v == value and a == arm and epoch and epoch <= n:
                            ax.plot(
                                [epoch],
                                [mean[epoch - 1]],
                                marker=markers.get(arm, "v"),
                                ms=8,
                                color=color,
                                mec="black",
                                mew=0.5,
                                alpha=0.8,
                                ls="none",
                            )
        if not ax.get_lines():  # no finished run for this value: say how far its runs are
            running = [
                f"{r['arm']} seed {r['seed']}: {run_progress(r, result['protocol']['epochs'])}"
                for r in result["runs"]
                if r["sweep_value"] == value and not r.get("finished")
            ]
            note = "\n".join(["no finished run yet", *running])
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.3")
            result.setdefault("figure_notes", {})[value] = note
        ax.set_title(f"{result['sweep']}={value} (triangles: the selected epochs)", fontsize=10)
        ax.set_xlabel("epoch")
        if exp.log_scale:
            ax.set_yscale("log")
    lower[0].set_ylabel(exp.curve_label)
    for ax in (*upper, *lower):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(
        f"{result['experiment']}: {_title(result, exp)} over {result['sweep']}, {result['protocol']['epochs']} epochs"
    )
    fig.savefig(path, dpi=100)
    titles = [ax.get_title() for ax in (*upper, *lower)]
    plt.close(fig)
    return titles


def sweep_positions(values) -> dict:
    """x positions of the sweep values on the metric-vs-value panel: the numbers themselves
    (floats), or 0, 1, ... (ints) in the given order when a value is not a number."""
    try:
        return {v: float(v) for v in values}
    except (TypeError, ValueError):
        return {v: i for i, v in enumerate(values)}


def parse_sweep_values(result):
    """The sweep values in the order of the command (``--sweep layers=2,4,6,8``)."""
    return list(dict.fromkeys(g["sweep_value"] for g in result["groups"]))
