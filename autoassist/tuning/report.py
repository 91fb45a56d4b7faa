"""What ``autoassist tune`` shows a person: a markdown table of every probe and a PNG of the
probes' metric-vs-cost curves per rung against the uniform baseline; for ``--objective
frontier``, every setting's frontier (final metric against cost, one point per run) against
uniform's, and the chosen point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoassist.plotting import subplots


def _fmt(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def table(rungs: list[dict[str, Any]], objective: str) -> str:
    lines = []
    for r, rung in enumerate(rungs):
        base = rung["uniform"][0]
        lines += [f"### rung {r + 1}: {rung['epochs']} epochs (uniform final metric "
                  f"{base['metric'][-1]:.4f} in {base['seconds'][-1]:.1f} s)", "",
                  "| rank | candidate | settings | score | "
                  + ("saving vs uniform | reached (seeds)" if objective == "time_to_target"
                     else "metric at uniform's cost | final metric") + " |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for rank, c in enumerate(rung["candidates"], 1):
            seeds = c["seeds"]
            if objective == "time_to_target":
                savings = [s.get("saving") for s in seeds]
                a = ("-" if None in savings
                     else f"{100 * sum(savings) / len(savings):.0f}%")
                b = f"{sum(bool(s.get('reached')) for s in seeds)}/{len(seeds)}"
            else:
                vals = [s.get("metric_at_cost") for s in seeds]
                a = "-" if None in vals else f"{sum(vals) / len(vals):.4f}"
                finals = [s.get("final_metric") for s in seeds]
                b = "failed" if None in finals else f"{sum(finals) / len(finals):.4f}"
            kept = " (kept)" if c["index"] in rung["kept"] else ""
            lines.append(f"| {rank} | {c['index']}{kept} | {_fmt(c['params'])} | "
                         f"{c['score']:.3f} | {a} | {b} |")
        lines.append("")
    return "\n".join(lines)


def plot(rungs: list[dict[str, Any]], path: Path, *, cost: str, objective: str) -> Path | None:
    made = subplots(1, len(rungs), figsize=(5 * len(rungs), 4), squeeze=False)
    if made is None:  # no matplotlib: the JSON and tables say it all
        return None
    fig, axes = made
    for ax, rung in zip(axes[0], rungs, strict=True):
        best = rung["candidates"][0]["index"]
        for c in rung["candidates"]:
            curve = c["curves"][0]
            if curve is None:
                continue
            style = dict(color="tab:red", lw=2, zorder=3, label=f"best: #{best}") \
                if c["index"] == best else dict(color="tab:gray", lw=1, alpha=0.6)
            ax.plot(curve[cost], curve["metric"], marker=".", **style)
        base = rung["uniform"][0]
        ax.plot(base[cost], base["metric"], "k--", marker="o", lw=2, label="uniform")
        if objective == "time_to_target":
            ax.axhline(base["metric"][-1], color="k", lw=0.5, ls=":")
        ax.set_title(f"{rung['epochs']} epochs, {len(rung['candidates'])} candidates")
        ax.set_xlabel("training seconds" if cost == "seconds" else "instances trained")
        ax.set_ylabel("validation metric")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("autoassist tune: probes per rung (grey), chosen setting (red), uniform (black)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# -- objective "frontier": metric against cost, one point per run -----------------------------
def _num(v: float | None, cost: str) -> str:
    if v is None:
        return "-"
    return f"{v:.1f} s" if cost == "seconds" else f"{v:,.0f}"


def _front(points: list[dict[str, Any]], cost: str) -> str:
    return "; ".join(f"{p['epochs']} ep: {p['metric']:.4f} at {_num(p['cost'], cost)}"
                     for p in points)


def frontier_table(rungs: list[dict[str, Any]], headline: dict[str, Any], cost: str) -> str:
    """Markdown: per rung, uniform's frontier and each candidate's, with the saving and the
    epoch count to train; then the recommendation.

    Args:
        rungs: the rungs ``tune(objective="frontier")`` returns.
        headline: its headline (the recommendation).
        cost: ``"seconds"`` or ``"instances"``, the cost the frontiers are read on.

    Returns:
        The table, ending with one line that says what to train for how many epochs.
    """
    lines = []
    for r, rung in enumerate(rungs):
        tol = f", within {rung['tolerance']:g}" if rung["tolerance"] else ""
        lines += [f"### rung {r + 1}: usual run {rung['epochs']} epochs, target "
                  f"{rung['target']:.4f} (uniform's final metric at {rung['epochs']} "
                  f"epochs{tol})", "",
                  f"uniform's frontier: {_front(rung['uniform_points'], cost)}; it reaches "
                  f"the target at {_num(rung['uniform_cost_to_target'], cost)} (trained: "
                  f"{rung['uniform_epochs']} epochs)", "",
                  "| rank | candidate | settings | cost/epoch vs uniform | frontier "
                  "(epochs: final metric at cost) | reaches target at | saving vs uniform's "
                  "frontier | epochs to train |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for rank, c in enumerate(rung["candidates"], 1):
            kept = " (kept)" if c["index"] in rung["kept"] else ""
            ratio = "-" if c.get("cost_ratio") is None else f"{c['cost_ratio']:.2f}"
            if c["failed"]:
                cells = ["failed: " + str(c["error"]).splitlines()[-1][:80], "-", "-", "-"]
            elif not c["reached"]:
                gain = "" if c.get("gain") is None else f" (best margin {c['gain']:+.4f})"
                cells = [_front(c["points"], cost), "not reached" + gain, "-", "-"]
            else:
                up = " (interpolated: next measured)" if c["interpolated"] else ""
                cells = [_front(c["points"], cost), _num(c["cost_to_target"], cost),
                         f"{100 * c['saving']:.0f}%", f"{c['epochs']}{up}"]
            lines.append(f"| {rank} | {c['index']}{kept} | {_fmt(c['params'])} | {ratio} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    lines.append(recommendation(headline))
    return "\n".join(lines)


def recommendation(headline: dict[str, Any]) -> str:
    """One plain sentence: what to train, for how many epochs, and why.

    Args:
        headline: the headline of ``tune(objective="frontier")``.

    Returns:
        The sentence.
    """
    cost = headline["cost"]
    target = (f"the target {headline['target']:.4f} (uniform's final metric at "
              f"{headline['max_epochs']} epochs)")
    if headline["beats_uniform"]:
        up = (" The frontier reaches the target between measured runs; the epoch count is "
              "rounded up to the next measured one." if headline["epochs_interpolated"] else "")
        return (f"**Recommendation: wrap the loader with tuned.toml and train "
                f"{headline['epochs']} epochs.** It reaches {target} at "
                f"{_num(headline['cost_to_target'], cost)}, {100 * headline['saving']:.0f}% "
                f"less than uniform's frontier ({_num(headline['uniform_cost_to_target'], cost)}"
                f"); the {headline['epochs']}-epoch run measured "
                f"{_num(headline['cost_at_epochs'], cost)}.{up}")
    why = ("its frontier never reaches the target" if not headline["reached"] else
           f"it reaches the target at {_num(headline['cost_to_target'], cost)}, no cheaper than "
           f"uniform's {_num(headline['uniform_cost_to_target'], cost)}")
    return (f"**Recommendation: no setting beat uniform's frontier: train uniformly (the plain "
            f"loader) for {headline['epochs']} epochs**, uniform's smallest measured budget "
            f"that reaches {target}. The best setting found ({why}) is in tuned.toml for "
            "reference, with wrap = false.")


def frontier_plot(rungs: list[dict[str, Any]], headline: dict[str, Any], path: Path, *,
                  cost: str) -> Path | None:
    """PNG: per rung, final metric against cost for uniform's frontier (black) and each
    candidate's (grey; the chosen one red), the target, and the chosen point (a star).

    Args:
        rungs: the rungs ``tune(objective="frontier")`` returns.
        headline: its headline (the chosen point).
        path: where to write the PNG.
        cost: ``"seconds"`` or ``"instances"``.

    Returns:
        ``path``, or None without matplotlib.
    """
    made = subplots(1, len(rungs), figsize=(5.5 * len(rungs), 4.2), squeeze=False)
    if made is None:
        return None
    fig, axes = made
    for r, (ax, rung) in enumerate(zip(axes[0], rungs, strict=True)):
        final = r == len(rungs) - 1
        best = rung["candidates"][0]["index"]
        for c in rung["candidates"]:
            pts = c["points"]
            if not pts:
                continue
            chosen = c["index"] == best
            style = (dict(color="tab:red", lw=2, zorder=3, label=f"best: #{best}") if chosen
                     else dict(color="tab:gray", lw=1, alpha=0.6))
            ax.plot([p["cost"] for p in pts], [p["metric"] for p in pts], marker="o", ms=3,
                    **style)
            if chosen:
                for p in pts:
                    ax.annotate(str(p["epochs"]), (p["cost"], p["metric"]), fontsize=7,
                                color="tab:red", xytext=(3, 3), textcoords="offset points")
        u = rung["uniform_points"]
        ax.plot([p["cost"] for p in u], [p["metric"] for p in u], "k--", marker="s", lw=2,
                label="uniform")
        for p in u:
            ax.annotate(str(p["epochs"]), (p["cost"], p["metric"]), fontsize=7,
                        xytext=(3, -9), textcoords="offset points")
        ax.axhline(rung["target"], color="k", lw=0.6, ls=":", label="target")
        if final:
            wrap = headline["beats_uniform"]
            pts = rungs[-1]["candidates"][0]["points"] if wrap else u
            p = next(p for p in pts if p["epochs"] == headline["epochs"])
            ax.plot([p["cost"]], [p["metric"]], marker="*", ms=16, color="gold",
                    markeredgecolor="k", zorder=5,
                    label=f"chosen: {'autoassist' if wrap else 'uniform'}, "
                    f"{headline['epochs']} epochs")
        ax.set_title(f"usual run {rung['epochs']} epochs, {len(rung['candidates'])} "
                     "candidates")
        ax.set_xlabel("training seconds" if cost == "seconds" else "instances trained")
        ax.set_ylabel("final validation metric")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("autoassist tune --objective frontier: one point per run (epochs annotated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
