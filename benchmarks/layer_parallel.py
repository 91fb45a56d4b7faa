"""Layer-parallel auxiliary-variable training vs backprop on Fashion-MNIST (papers C and D).

    python -m benchmarks.layer_parallel [--quick]

In one run, from the same initial weights, on the same training subset:

- plain backprop (with augmentation) for the whole epoch budget;
- the serial-parallel hybrid with the penalty and with the augmented-Lagrangian solver: the
  parallel phase with one process per block (2 blocks: this machine has 2 cores), then the
  serial correction phase with augmentation;
- the same AL parallel phase run layer-serially in one process (the speedup's reference), and
  its bytes per epoch without the downsampling filter (the filter's saving);
- the WideResNet variant (``--widen`` times the channels): backprop and the AL hybrid, its
  parallel phase with one process per block and layer-serially;
- Stochastic Block-ADMM (batch mode) on the same ResNet blocks, in one process and with one
  process per block, and DeepFacto (a conv block, an NMF block, a linear classifier) with its
  factorisation error, non-negativity and the class selectivity of its codes, against the
  same network trained by backprop with a ReLU layer in the NMF layer's place.

Last stdout line: JSON with ``acc_backprop``, ``acc_hybrid_penalty``, ``acc_hybrid_al``,
``acc_block_admm``, ``bytes_ratio_filters`` and ``speedup_vs_layer_serial`` (the parallel
phase's wall-clock, process launch included; ``speedup_per_epoch_vs_layer_serial`` leaves the
launch out).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from autoassist.plotting import subplots
from benchmarks._common import (
    RESULTS,
    git_commit,
    machine_info,
    thread_info,
    write_result,
)


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return sum(int((model(x[i:i + 2000]).argmax(1) == y[i:i + 2000]).sum())
                   for i in range(0, len(x), 2000)) / len(x)


def plot(result: dict, path: Path) -> Path | None:
    made = subplots(1, 4, figsize=(21, 4.2))
    if made is None:  # no matplotlib: the JSON is the result
        return None
    fig, axes = made
    ax = axes[0]
    for name, run in result["runs"].items():
        t, acc = [0.0], [run["initial_accuracy"]]
        for h in run["history"]:
            if "accuracy" in h:
                t.append(t[-1] + h.get("phase_seconds", h["seconds"]))
                acc.append(h["accuracy"])
        ax.plot(t, acc, marker="o", label=name)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy per wall-clock")
    ax.legend(fontsize=8)
    ax = axes[1]
    for name, run in result["runs"].items():
        if name in ("hybrid_al", "hybrid_penalty", "hybrid_al_wide",
                    "block_admm_processes"):  # identical to their layer-serial runs
            continue
        res = [h["residuals_end"] for h in run["history"] if h.get("residuals_end")]
        if res:
            for k in range(len(res[0])):
                ax.semilogy(range(1, len(res) + 1), [max(r[k], 1e-12) for r in res],
                            marker=".", label=f"{name}, boundary {k + 1}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("relative constraint residual (all instances)")
    ax.set_title("constraint residuals after each epoch")
    ax.legend(fontsize=7)
    ax = axes[2]
    for name, run in result["runs"].items():
        key = "objective" if name.endswith("layer_serial") else "lagrangian"
        values = [h[key] for h in run["history"] if key in h]
        if len(values) > 1:
            ax.plot(range(1, len(values) + 1), values, marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("per instance, all instances")
    ax.set_title("augmented Lagrangian after each epoch")
    ax.legend(fontsize=7)
    ax = axes[3]
    df = result["deepfacto"]["history"]
    ax.plot(range(1, len(df) + 1), [h["nmf_reconstruction_error"] for h in df], marker="o",
            label="NMF relative reconstruction error")
    ax.plot(range(1, len(df) + 1), [h["loss"] for h in df], marker="s",
            label="classifier loss (aux codes)")
    ax.set_xlabel("epoch")
    ax.set_title("DeepFacto (Block-ADMM)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.layer_parallel",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4,000 images, narrow net (~4 min)")
    p.add_argument("--images", type=int, default=12_000)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--widen", type=int, default=2, help="WideResNet: this many times --width")
    p.add_argument("--parallel-epochs", type=int, default=4)
    p.add_argument("--serial-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    commit = git_commit()  # the code this run loads (a later commit may land meanwhile)
    if args.quick:
        args.images, args.width, args.parallel_epochs, args.serial_epochs = 4000, 8, 3, 1
    from autoassist.bench.datasets import FashionMNIST
    from autoassist.boss.block_admm import ADMMConfig, BlockADMM, NMFBlock
    from autoassist.boss.disentangling import class_selectivity, sparsity
    from autoassist.boss.hybrid import HybridConfig, HybridTrainer
    from autoassist.boss.resnet import resnet_blocks

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 1 thread per process: the parallel phase runs 2 of them
    try:
        train = FashionMNIST("train", limit=args.images)
        test = FashionMNIST("test", limit=2000 if args.quick else None)
        x, y, xt, yt = train.images, train.labels, test.images, test.labels
        epochs = args.parallel_epochs + args.serial_epochs

        def blocks(width=args.width):
            with torch.random.fork_rng():
                torch.manual_seed(args.seed)
                return resnet_blocks(blocks=2, units_per_block=2, width=width)

        def evaluate(model):
            return _accuracy(model, xt, yt)

        runs = {}
        init_acc = evaluate(blocks())

        def hybrid(name, solver, parallel, processes, filt=2, serial=None, width=args.width):
            cfg = HybridConfig(solver=solver, parallel_epochs=parallel,
                               serial_epochs=args.serial_epochs if serial is None else serial,
                               batch_size=128, filter=filt, seed=args.seed)
            t0 = time.perf_counter()
            tr = HybridTrainer(blocks(width), x, y, cfg)
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            hist = tr.fit(evaluate=evaluate, progress=True, processes=processes)
            total = time.perf_counter() - t0
            phase = sum(h["seconds"] for h in hist if h["phase"] == "parallel")
            if processes and parallel:  # one launch for the phase: its wall-clock as a whole
                phase_wall = hist[0]["phase_wall_seconds"]  # measurements excluded
                for h in hist:
                    if h["phase"] == "parallel":
                        h["phase_seconds"] = phase_wall / parallel
                phase = phase_wall
            runs[name] = {"history": hist, "seconds": total, "setup_seconds": setup,
                          "parallel_phase_seconds": phase, "width": width,
                          "initial_accuracy": init_acc if width == args.width
                          else evaluate(blocks(width)),
                          "accuracy": hist[-1].get("accuracy"), "bytes": tr.ledger.bytes}
            print(f"  {name:<24} accuracy {runs[name]['accuracy']:.4f} in {total:.1f} s "
                  f"(parallel phase {phase:.1f} s, {tr.ledger.bytes / 1e6:.1f} MB exchanged)",
                  flush=True)
            return runs[name]

        print(f"Fashion-MNIST: {len(x)} training images, {len(xt)} test; ResNet 2 blocks x 2 "
              f"units, width {args.width}; {args.parallel_epochs} parallel + "
              f"{args.serial_epochs} serial epochs")
        hybrid("backprop", "penalty", 0, False, serial=epochs)
        hybrid("hybrid_penalty", "penalty", args.parallel_epochs, True)
        al = hybrid("hybrid_al", "al", args.parallel_epochs, True)
        al_serial = hybrid("hybrid_al_layer_serial", "al", args.parallel_epochs, False)
        nofilter = hybrid("al_no_filter_1_epoch", "al", 1, False, filt=None, serial=0)
        per_epoch_filtered = al_serial["bytes"] / args.parallel_epochs
        wide = args.width * args.widen
        print(f"WideResNet variant: width {wide}")
        hybrid("backprop_wide", "penalty", 0, False, serial=epochs, width=wide)
        al_wide = hybrid("hybrid_al_wide", "al", args.parallel_epochs, True, width=wide)
        al_wide_serial = hybrid("hybrid_al_wide_layer_serial", "al", args.parallel_epochs, False,
                                width=wide)
        bytes_ratio = per_epoch_filtered / nofilter["bytes"]

        admm = BlockADMM(blocks(), x, y, ADMMConfig(epochs=epochs, mode="batch",
                                                    batch_size=128, seed=args.seed))
        t0 = time.perf_counter()
        admm_hist = admm.fit(evaluate=evaluate)
        runs["block_admm"] = {"history": admm_hist, "seconds": time.perf_counter() - t0,
                              "initial_accuracy": init_acc,
                              "accuracy": admm_hist[-1]["accuracy"]}
        print(f"  {'block_admm':<24} accuracy {runs['block_admm']['accuracy']:.4f} in "
              f"{runs['block_admm']['seconds']:.1f} s", flush=True)
        admm_p = BlockADMM(blocks(), x, y, ADMMConfig(epochs=epochs, mode="batch",
                                                      batch_size=128, seed=args.seed))
        t0 = time.perf_counter()
        admm_p_hist = admm_p.fit(processes=True)  # one launch; evaluated after it, untimed
        wall = admm_p_hist[0]["phase_wall_seconds"]
        admm_p_hist[-1]["accuracy"] = evaluate(admm_p.blocks)
        for h in admm_p_hist:
            h["phase_seconds"] = wall / len(admm_p_hist)
        runs["block_admm_processes"] = {"history": admm_p_hist, "seconds": wall,
                                        "initial_accuracy": init_acc,
                                        "accuracy": admm_p_hist[-1]["accuracy"]}
        print(f"  {'block_admm_processes':<24} accuracy "
              f"{runs['block_admm_processes']['accuracy']:.4f} in {wall:.1f} s", flush=True)

        def facto_net(middle):
            with torch.random.fork_rng():
                torch.manual_seed(args.seed)
                return nn.Sequential(
                    nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Flatten()),
                    middle, nn.Sequential(nn.Linear(24, 10)))

        facto = facto_net(NMFBlock(392, 24, seed=args.seed))
        df = BlockADMM(facto, x, y, ADMMConfig(epochs=epochs, batch_size=64, seed=args.seed))
        df_hist = df.fit(evaluate=evaluate)
        # the same network by backprop (one-block Block-ADMM is plain SGD), ReLU in NMF's place
        relu_net = facto_net(nn.Sequential(nn.Linear(392, 24), nn.ReLU()))
        bp = BlockADMM(nn.Sequential(relu_net), x, y,
                       ADMMConfig(epochs=epochs, batch_size=64, seed=args.seed))
        bp_hist = bp.fit(evaluate=evaluate)
        with torch.no_grad():
            codes = facto[1](facto[0](xt))
            relu_features = relu_net[1](relu_net[0](xt))
        sel_nmf, sel_relu = class_selectivity(codes, yt), class_selectivity(relu_features, yt)
        deepfacto = {"history": df_hist, "accuracy": df_hist[-1]["accuracy"],
                     "reconstruction_error": df_hist[-1]["nmf_reconstruction_error"],
                     "min_W": float(facto[1].W.min()),
                     "min_code": min(h["nmf_min_code"] for h in df_hist),
                     "selectivity": sel_nmf.tolist(),
                     "mean_selectivity": float(sel_nmf.mean()),
                     "sparsity": sparsity(codes),
                     "backprop_relu": {"history": bp_hist, "accuracy": bp_hist[-1]["accuracy"],
                                       "selectivity": sel_relu.tolist(),
                                       "mean_selectivity": float(sel_relu.mean()),
                                       "sparsity": sparsity(relu_features)}}
        print(f"  deepfacto: accuracy {deepfacto['accuracy']:.4f}, NMF relative error "
              f"{deepfacto['reconstruction_error']:.3f}, min W {deepfacto['min_W']:.3g}, "
              f"class selectivity {deepfacto['mean_selectivity']:.3f} (backprop ReLU layer: "
              f"{sel_relu.mean():.3f}, accuracy {bp_hist[-1]['accuracy']:.4f})")
    finally:
        torch.set_num_threads(threads)
    speedup = al_serial["parallel_phase_seconds"] / al["parallel_phase_seconds"]

    def epoch_seconds(run):  # steady state: the slowest block's epoch, launch excluded
        return [h["seconds"] for h in run["history"] if h["phase"] == "parallel"]

    per_epoch = sum(epoch_seconds(al_serial)) / sum(epoch_seconds(al))
    per_epoch_wide = sum(epoch_seconds(al_wide_serial)) / sum(epoch_seconds(al_wide))
    admm_epochs = [h["seconds"] for h in runs["block_admm"]["history"]]
    admm_p_epochs = [h["seconds"] for h in runs["block_admm_processes"]["history"]]
    headline = {
        "acc_backprop": runs["backprop"]["accuracy"],
        "acc_hybrid_penalty": runs["hybrid_penalty"]["accuracy"],
        "acc_hybrid_al": runs["hybrid_al"]["accuracy"],
        "acc_block_admm": runs["block_admm"]["accuracy"],
        "acc_deepfacto": deepfacto["accuracy"],
        "bytes_ratio_filters": bytes_ratio,
        "speedup_vs_layer_serial": speedup,
        "speedup_per_epoch_vs_layer_serial": per_epoch,
        "launch_seconds": al["parallel_phase_seconds"] - sum(epoch_seconds(al)),
        "acc_backprop_wide": runs["backprop_wide"]["accuracy"],
        "acc_hybrid_al_wide": al_wide["accuracy"],
        "speedup_wide_vs_layer_serial": (al_wide_serial["parallel_phase_seconds"]
                                         / al_wide["parallel_phase_seconds"]),
        "speedup_wide_per_epoch_vs_layer_serial": per_epoch_wide,
        "deepfacto_selectivity": deepfacto["mean_selectivity"],
        "backprop_relu_selectivity": deepfacto["backprop_relu"]["mean_selectivity"],
        "admm_speedup_per_epoch_processes": sum(admm_epochs) / sum(admm_p_epochs),
        "admm_speedup_processes": sum(admm_epochs) / runs["block_admm_processes"]["seconds"],
        "seconds_backprop": runs["backprop"]["seconds"],
        "seconds_hybrid_al": runs["hybrid_al"]["seconds"],
        "images": len(x), "epochs": epochs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "layer_parallel_quick" if args.quick else "layer_parallel"
    result = {**headline, "runs": runs, "deepfacto": deepfacto,
              "config": vars(args), "commit": commit, "machine": machine_info(),
              "threads": {**thread_info(), "per_process": 1}}
    write_result(name, result, headline, lambda path: plot(result, path))
    return result


if __name__ == "__main__":
    main()
