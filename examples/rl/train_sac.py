"""SAC on a MuJoCo task with uniform, prioritised or Assistant replay (paper E's larger networks).

    python examples/rl/train_sac.py --env Hopper-v5 --steps 50000 --replay assistant \
        --torso densenet --ofe --actors 2 --out runs/rl/hopper

``--actors N`` collects with N actor processes (Ape-X style, bounded queue, policy pushed every
``--publish-every`` updates); ``--actors 0`` steps the environment in the learner's process.
``--checkpoint PATH`` saves the whole run every ``--checkpoint-every`` steps; ``--resume``
continues it (a larger ``--steps`` extends it).
Writes ``OUT/history.json`` (every evaluation: env steps, training seconds, return) and
``OUT/agent.pt`` (the agent's ``state_dict``), and prints one line per evaluation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from autoassist.rl.sac import SACConfig
from autoassist.rl.train import REPLAYS, RLConfig, train


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="InvertedPendulum-v5")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--replay", choices=REPLAYS, default="assistant")
    p.add_argument("--torso", choices=("mlp", "densenet"), default="densenet")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--units", type=int, default=128)
    p.add_argument("--ofe", action="store_true", help="OFENet features for actor and critic")
    p.add_argument("--actors", type=int, default=0)
    p.add_argument("--publish-every", type=int, default=50)
    p.add_argument("--floor", type=float, default=0.3, help="Assistant replay's floor b")
    p.add_argument("--start-steps", type=int, default=1000,
                   help="random actions first; updates start after as many transitions")
    p.add_argument("--eval-every", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="the learner's torch threads")
    p.add_argument("--out", default="runs/rl/example")
    p.add_argument("--checkpoint", help="save the whole run here (and at the end)")
    p.add_argument("--checkpoint-every", type=int, default=5000, help="environment steps")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    args = p.parse_args(argv)
    start = args.start_steps
    cfg = RLConfig(env_id=args.env, steps=args.steps, start_steps=start, update_after=start,
                   replay=args.replay, actors=args.actors, publish_every=args.publish_every,
                   eval_every=args.eval_every, seed=args.seed, threads=args.threads,
                   floor=args.floor,
                   sac=SACConfig(torso=args.torso, layers=args.layers, units=args.units,
                                 ofe=args.ofe, batch_size=args.batch_size))
    if args.resume and not args.checkpoint:
        p.error("--resume needs --checkpoint PATH")
    res = train(cfg, checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                resume=args.resume)
    for h in res.history:
        print(f"{h['env_steps']:>7} steps  {h['seconds']:7.1f} s  return {h['return']:8.1f}"
              + (f"  kept {h['kept_fraction']:.2f}" if "kept_fraction" in h else ""))
    if res.received is not None:
        print("transitions per actor process:", res.received)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"config": res.config, "history": res.history, "episodes": res.episodes,
               "received": res.received}
    (out / "history.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    torch.save(res.agent.state_dict(), out / "agent.pt")
    print(f"wrote {out / 'history.json'} and {out / 'agent.pt'}")
    return summary


if __name__ == "__main__":
    main()
