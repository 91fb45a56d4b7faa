"""What ``autoassist tune`` shows a person: a markdown table of every probe and a PNG of the
probes' metric-vs-cost curves per rung against the uniform baseline."""

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
