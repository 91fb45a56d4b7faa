"""Deep RL (paper E): network variants x replay samplers, return per env step and per second.

    python -m benchmarks.rl [--quick] [--env ENV] [--steps N] [--seeds S]

In one run, SAC on one gymnasium MuJoCo task, each of

- networks: a small MLP (2 x 256, ReLU), a DenseNet MLP (each layer sees the input and every
  earlier layer), and the DenseNet MLP on OFENet features (decoupled representation learning);
- replay: uniform, proportional prioritised (sum tree, IS weights) and Assistant replay (the
  shrinking sampler: the Assistant learns from TD errors which transitions are informative),

for every seed, with the same environment-step budget, replay ratio, batch size and threads (1
torch thread: the Assistant process gets the other core). The learner collects in its own
process here (one environment step, one update): on 2 cores, actor processes would compete
with the learner for the same cores; ``examples/rl/train_sac.py --actors N`` runs them.

Writes ``benchmarks/results/rl[_quick].json`` (every evaluation: env steps, training seconds,
return) and a PNG (mean return against env steps and against training seconds); last stdout
line: JSON with ``final_return`` per variant (mean over seeds) and the run's settings.
"""

from __future__ import annotations

import argparse
import statistics
import time

from autoassist.plotting import subplots
from benchmarks._common import (
    git_commit,
    machine_info,
    thread_info,
    write_result,
)

NETWORKS = {
    "mlp": {"torso": "mlp", "layers": 2, "units": 256},
    "densenet": {"torso": "densenet", "layers": 2, "units": 128},
    "densenet+ofenet": {"torso": "densenet", "layers": 2, "units": 128, "ofe": True,
                        "ofe_layers": 2, "ofe_units": 32},
}
REPLAY = ("uniform", "prioritized", "assistant")


def plot(result: dict, path):
    made = subplots(1, 2, figsize=(13, 4.5))
    if made is None:  # no matplotlib: the JSON is the result
        return None
    fig, axes = made
    styles = {"uniform": "-", "prioritized": "--", "assistant": ":"}
    colors = dict(zip(NETWORKS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for name, runs in result["runs"].items():
        net, replay = name.split(" / ")
        steps = [h["env_steps"] for h in runs[0]["history"]]
        mean = [statistics.fmean(r["history"][i]["return"] for r in runs)
                for i in range(len(steps))]
        secs = [statistics.fmean(r["history"][i]["seconds"] for r in runs)
                for i in range(len(steps))]
        kw = {"ls": styles[replay], "color": colors[net], "label": name, "marker": "."}
        axes[0].plot(steps, mean, **kw)
        axes[1].plot(secs, mean, **kw)
    axes[0].set_xlabel("environment steps")
    axes[1].set_xlabel("training seconds (evaluation excluded)")
    for ax in axes:
        ax.set_ylabel(f"mean evaluation return ({result['seeds']} seeds)")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"SAC on {result['env']}: return per environment step")
    axes[1].set_title("return per wall-clock")
    axes[1].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rl",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="InvertedPendulum-v5, 3,000 steps, 1 seed (about 5 minutes)")
    p.add_argument("--env", default="InvertedPendulum-v5")
    p.add_argument("--steps", type=int, default=15_000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--networks", default=",".join(NETWORKS))
    p.add_argument("--replay", default=",".join(REPLAY))
    p.add_argument("--tag", default="", help="results go to rl[_quick][_TAG].json")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seeds = 3000, 1
    nets = [n for n in args.networks.split(",") if n]
    replays = [r for r in args.replay.split(",") if r]
    for n in nets:
        if n not in NETWORKS:
            p.error(f"unknown network {n!r}: one of {', '.join(NETWORKS)}")
    for r in replays:
        if r not in REPLAY:
            p.error(f"unknown replay {r!r}: one of {', '.join(REPLAY)}")
    eval_every = args.eval_every or max(500, args.steps // 10)
    start = min(1000, args.steps // 5)

    from autoassist.rl.sac import SACConfig
    from autoassist.rl.train import RLConfig, train

    runs: dict[str, list[dict]] = {}
    t_all, commit = time.perf_counter(), git_commit()  # the code that runs: read at the start
    for seed in range(args.seeds):
        for net in nets:
            for replay in replays:
                cfg = RLConfig(env_id=args.env, steps=args.steps, start_steps=start,
                               update_after=start, replay=replay, eval_every=eval_every,
                               eval_episodes=5, seed=seed, threads=1,
                               round_steps=max(250, args.steps // 20),
                               sac=SACConfig(batch_size=args.batch_size, **NETWORKS[net]))
                res = train(cfg, progress=True)
                name = f"{net} / {replay}"
                runs.setdefault(name, []).append(
                    {"seed": seed, "history": res.history, "episodes": len(res.episodes),
                     "sampler": res.sampler})
                h = res.history[-1]
                print(f"  seed {seed} {name:<32} return {h['return']:8.1f} after "
                      f"{h['env_steps']} steps, {h['seconds']:.0f} s"
                      + (f", kept {h['kept_fraction']:.2f}" if "kept_fraction" in h else ""),
                      flush=True)
    final = {name: statistics.fmean(r["history"][-1]["return"] for r in rs)
             for name, rs in runs.items()}
    seconds = {name: statistics.fmean(r["history"][-1]["seconds"] for r in rs)
               for name, rs in runs.items()}
    headline = {"env": args.env, "steps": args.steps, "seeds": args.seeds,
                "final_return": final, "train_seconds": seconds}
    result = {**headline, "runs": runs, "config": vars(args),
              "wall_seconds": time.perf_counter() - t_all, "commit": commit,
              "machine": machine_info(), "threads": {**thread_info(), "learner": 1}}
    name = ("rl_quick" if args.quick else "rl") + (f"_{args.tag}" if args.tag else "")
    write_result(name, result, headline,
                 lambda path: plot(result, path))
    return result


if __name__ == "__main__":
    main()
