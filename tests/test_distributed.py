"""Two gloo ranks: every rank selects the same subset and takes a disjoint, equal-length shard,
and rank 0's Assistant learns from both ranks' losses."""

import datetime
import json

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

N = 1000


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import autoassist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(N, 6, generator=gen), torch.randint(0, 4, (N,), generator=gen))
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=5)
    # a learner: the test follows the feature rows that rank 1 computes to rank 0's Assistant
    loader = autoassist.wrap(DataLoader(data, batch_size=32, sampler=sampler), floor=0.3,
                             assistant="logistic", sync=True, warmup_epochs=1, seed=9)
    record = {"ids": [], "masks": [], "lens": [], "have": []}
    for epoch in range(3):
        loader.set_epoch(epoch)
        record["lens"].append(len(loader))
        ids = []
        for x, y in loader:
            ids.append(loader._last_ids.tolist())
            # deterministic losses tied to the instance, so the Assistant has something to learn
            loader.report(x[:, 0] ** 2 + y.float())
        record["ids"].append(sum(ids, []))
        plan = loader.engine.current
        record["masks"].append(None if plan.mask is None else np.flatnonzero(plan.mask).tolist())
        record["have"].append(int(loader.engine.state.have.sum()))
        dist.barrier()
    record["telemetry"] = [{k: t[k] for k in ("reported_instances", "gathered_instances")}
                           for t in loader.telemetry]
    record["trained"] = loader.engine.state.trained
    loader.close()
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()


def test_two_gloo_ranks_share_selection_and_shard_it(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    # warm-up epoch: DistributedSampler's own sharding of all N
    assert sorted(r0["ids"][0] + r1["ids"][0]) == list(range(N))
    for epoch in (1, 2):
        assert r0["masks"][epoch] == r1["masks"][epoch]  # same kept set on every rank
        kept = r0["masks"][epoch]
        assert len(kept) < N
        a, b = r0["ids"][epoch], r1["ids"][epoch]
        assert len(a) == len(b)  # equal length: no rank waits for the other in DDP
        assert r0["lens"][epoch] == r1["lens"][epoch]
        union = set(a) | set(b)
        assert union == set(kept)
        assert len(set(a) & set(b)) <= 1  # disjoint up to one pad instance (odd kept count)
    # rank 0's Assistant hears rank 1 too: each plan gathers rank 1's reports since the last one
    gathered = [t["gathered_instances"] for t in r0["telemetry"]]
    sent = [t["reported_instances"] for t in r1["telemetry"]]
    assert gathered == [0, sent[0], sent[1]]
    assert r0["have"][1] == N  # features of the instances only rank 1 saw reached rank 0
    assert r1["have"][0] < N  # (rank 1 itself only computed its own shard's)
    own = sum(t["reported_instances"] for t in r0["telemetry"])
    assert r0["trained"] == own + sent[0] + sent[1]  # every loss it received, trained on
