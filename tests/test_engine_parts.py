"""Config files, Assistant learners, user features, iterable streams and the torchdata node."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, get_worker_info

import autoassist
from autoassist.config import ShrinkConfig

N = 3000


def _synthetic(seed=0):
    """Instances whose "loss" is a fixed function of their features: a learnable target."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 8, generator=gen)
    loss = torch.nn.functional.softplus(3 * x[:, 0] - 2 * x[:, 1])
    return x, loss


def test_config_roundtrip_toml_and_json(tmp_path):
    cfg = ShrinkConfig(floor=0.4, reweight=True, assistant="sgd", epochs=10, anneal_epochs=2)
    for suffix in (".toml", ".json"):
        path = cfg.to_file(tmp_path / f"shrink{suffix}")
        assert ShrinkConfig.from_file(path) == cfg
    (tmp_path / "bad.toml").write_text("[autoassist]\nfloor = 0.3\nflor = 2\n")
    with pytest.raises(ValueError, match="unknown shrink setting.*flor"):
        ShrinkConfig.from_file(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="toml or .json"):
        cfg.to_file(tmp_path / "x.yaml")
    with pytest.raises(ValueError, match="assistant"):
        ShrinkConfig(assistant="forest")


@pytest.mark.parametrize("kind", ["logistic", "sgd", "mlp", "memory"])
def test_every_assistant_kind_learns_which_instances_are_hard(kind):
    x, loss = _synthetic()
    data = TensorDataset(torch.arange(N))
    loader = autoassist.wrap(DataLoader(data, batch_size=100, shuffle=True),
                             features=x,
                             assistant=kind, sync=True, floor=0.1, warmup_epochs=2)
    with loader:
        for epoch in range(3):
            loader.set_epoch(epoch)
            for (idx,) in loader:
                loader.report(loss[idx])
        scores = loader.engine.current.scores
        tele = loader.telemetry
    hard = (loss > loss.median()).numpy()
    assert scores[hard].mean() > scores[~hard].mean() + 0.2, kind
    assert tele[-1]["assistant_accuracy"] > 0.75


def test_callable_features_and_bad_shapes():
    x, loss = _synthetic()
    data = TensorDataset(x, torch.arange(N))
    loader = autoassist.wrap(DataLoader(data, batch_size=50),
                             assistant="logistic", features=lambda b: b[0][:, :4],
                             feature_dim=4)
    with loader:
        xb, idx = next(iter(loader))
        loader.report(loss[idx])
        assert loader.engine.state.have[idx.numpy()].all()
    bad = autoassist.wrap(DataLoader(data, batch_size=50),
                          assistant="logistic", features=lambda b: b[0], feature_dim=4)
    with bad, pytest.raises(ValueError, match=r"expected \[batch, 4\]"):
        xb, idx = next(iter(bad))
        bad.report(loss[idx])
    with pytest.raises(ValueError, match="num_instances"):
        autoassist.wrap(DataLoader(data, batch_size=50),
                        assistant="logistic", features=torch.zeros(5, 3))


class _Stream(IterableDataset):
    def __init__(self, x):
        self.x = x

    def __iter__(self):
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(start, len(self.x), step):
            yield {"id": i, "x": self.x[i]}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterable_dataset_filtered_by_key(num_workers):
    x, loss = _synthetic()
    base = DataLoader(_Stream(x), batch_size=64, num_workers=num_workers)
    with pytest.raises(TypeError, match="key="):
        autoassist.wrap(base)
    loader = autoassist.wrap(base, key=lambda item: item["id"], num_instances=N,
                             assistant="logistic",
                             features=x, sync=True, floor=0.2, warmup_epochs=1)
    with loader:
        seen = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            ids = []
            for batch in loader:
                assert set(batch) == {"id", "x"}  # the user's collate output, untouched
                ids.append(batch["id"].numpy())
                assert np.array_equal(loader._last_ids, batch["id"].numpy())
                loader.report(loss[batch["id"]])
            seen.append(np.sort(np.concatenate(ids)))
        plan = loader.engine.current
    assert np.array_equal(seen[0], np.arange(N))
    assert np.array_equal(seen[1], np.flatnonzero(plan.mask))
    assert len(seen[1]) < N


def test_torchdata_node_epochs_and_resume():
    from torchdata import nodes

    from autoassist.pipelines.nodes import ShrinkSampler

    x, loss = _synthetic()

    def build():
        sampler = ShrinkSampler(N, assistant="logistic", features=x, sync=True, floor=0.2,
                                warmup_epochs=1, seed=4)
        loader = nodes.Loader(nodes.Batcher(sampler, batch_size=100, drop_last=False))
        return sampler, loader

    def epoch_ids(sampler, loader, stop_after=None):
        out = []
        for ids in loader:
            out.append(np.asarray(ids))
            sampler.report(loss[ids], ids)
            if stop_after is not None and len(out) == stop_after:
                return out, loader.state_dict()
        return out, None

    sampler, loader = build()
    e0, _ = epoch_ids(sampler, loader)
    e1, _ = epoch_ids(sampler, loader)
    assert sorted(np.concatenate(e0).tolist()) == list(range(N))
    kept = np.flatnonzero(sampler.engine.current.mask)
    assert sorted(np.concatenate(e1).tolist()) == kept.tolist()
    sampler.close()

    sampler2, loader2 = build()
    epoch_ids(sampler2, loader2)
    head, state = epoch_ids(sampler2, loader2, stop_after=5)
    sampler2.close()
    sampler3, loader3 = build()
    loader3.load_state_dict(state)
    tail, _ = epoch_ids(sampler3, loader3)
    sampler3.close()
    assert np.array_equal(np.concatenate(head + tail), np.concatenate(e1))


def test_iterable_dataset_resumes_mid_epoch():
    x, loss = _synthetic()

    def make():
        return autoassist.wrap(DataLoader(_Stream(x), batch_size=64),
                               key=lambda item: item["id"], num_instances=N, assistant="logistic",
                               features=x,
                               sync=True, floor=0.2, seed=8)

    def run(loader, stop_after=None, start_epoch=0):
        got = []
        for epoch in range(start_epoch, 3):
            if epoch != start_epoch or stop_after is not None:
                loader.set_epoch(epoch)
            for batch in loader:
                got.append(batch["id"].numpy().copy())
                loader.report(loss[batch["id"]])
                if stop_after is not None and len(got) == stop_after:
                    return got, loader.state_dict()
        return got, None

    with make() as a:
        a.set_epoch(0)
        full, _ = run(a, start_epoch=0)
    with make() as b:
        head, state = run(b, stop_after=47 + 10)  # epoch 0 has 47 batches: stop in epoch 1
    with make() as c:
        with pytest.raises(ValueError, match="state version"):
            c.load_state_dict({**state, "version": 0})
        c.load_state_dict(state)
        tail, _ = run(c, start_epoch=1)
    assert len(full) == len(head) + len(tail) < 3 * 47
    assert all(np.array_equal(p, q) for p, q in zip(full, head + tail, strict=True))


def test_a_config_in_any_accepted_form_resolves_the_same(tmp_path):
    cfg = ShrinkConfig(floor=0.4, reweight=True, warmup_epochs=2)
    path = cfg.to_file(tmp_path / "shrink.toml")
    forms = [cfg, cfg.to_dict(), {"autoassist": cfg.to_dict()}, path, str(path)]
    assert all(ShrinkConfig.coerce(form) == cfg for form in forms)
    assert ShrinkConfig.coerce(None) == ShrinkConfig()
    assert ShrinkConfig.coerce(path, floor=0.6) == cfg.replace(floor=0.6)  # overrides win
    with pytest.raises(TypeError, match="a dict of settings or a .toml/.json file path, got int"):
        ShrinkConfig.coerce(3)
    with pytest.raises(ValueError, match="floor"):
        ShrinkConfig.coerce(cfg, floor=2.0)
    data = TensorDataset(torch.arange(10))
    with autoassist.wrap(DataLoader(data, batch_size=5), str(path), floor=0.5) as loader:
        assert loader.config == cfg.replace(floor=0.5)  # the wrapper resolves it the same way


def test_proportional_assistant_keeps_by_the_last_loss_with_its_mean_keep():
    """assistant="proportional": P_i = clip(last_i / tau, floor, 1) with mean(P) = keep, the
    Boss's selection and mean(P)/P_i weights follow exactly that P; bad settings are refused."""
    with pytest.raises(ValueError, match="keep"):
        ShrinkConfig(assistant="proportional")  # keep is required
    with pytest.raises(ValueError, match="keep"):
        ShrinkConfig(assistant="proportional", keep=0.3)  # the default floor 0.5 is above it
    with pytest.raises(ValueError, match="only the proportional"):
        ShrinkConfig(keep=0.3, floor=0.1)
    with pytest.raises(ValueError, match="rank_power"):
        ShrinkConfig(assistant="proportional", keep=0.3, floor=0.1, rank_power=3)
    data = TensorDataset(torch.arange(N))
    loss = torch.linspace(0.01, 2.0, N)  # instance i's loss, the same every epoch
    loader = autoassist.wrap(DataLoader(data, batch_size=100, shuffle=True),
                             assistant="proportional", keep=1 / 3, floor=0.1, sync=True)
    kept = []
    with loader:
        for epoch in range(4):
            loader.set_epoch(epoch)
            ids = []
            for (idx,) in loader:
                ids.append(idx)
                loader.report(loss[idx])
            kept.append(torch.cat(ids).numpy())
        scores, _ = loader.engine.state.snapshot()
        assert loader.engine.dim == 0  # it reads no features
        weights = loader.engine.current.all_weights.copy()
    P = 0.1 + 0.9 * scores.astype(np.float64)
    assert abs(P.mean() - 1 / 3) < 0.01
    inside = (P > 0.1001) & (P < 0.9999)  # uncapped: proportional to the last loss
    assert inside.sum() > N // 4
    ratio = P[inside] / loss.numpy()[inside]
    assert ratio.max() / ratio.min() == pytest.approx(1.0, rel=2e-3)
    np.testing.assert_allclose(weights, P.mean() / P, rtol=2e-3)
    assert len(kept[0]) == N  # warm-up
    hi, lo = np.arange(N) >= 3 * N // 4, np.arange(N) < N // 4
    for ids in kept[2:]:
        assert 0.2 < len(ids) / N < 0.47
        assert np.isin(np.flatnonzero(hi), ids).mean() > 3 * np.isin(np.flatnonzero(lo), ids).mean()


def test_every_learner_honours_the_assistant_model_interface_and_a_gap_is_named():
    """The Assistant process calls only AssistantModel's methods; a learner that forgets one
    fails with its own name, and the defaults (unseen instances informative, scores as they
    are) hold for every learner that does not override them."""
    from autoassist.assistant.models import MODELS, AssistantModel

    assert all(issubclass(cls, AssistantModel) for cls in MODELS.values())
    scores = np.array([0.2, 0.9], np.float32)
    for kind in ("logistic", "sgd", "memory"):
        assert MODELS[kind].unseen_score == 1.0
        assert MODELS[kind].calibrate(MODELS[kind](4), scores) is scores

    class Forgetful(AssistantModel):
        kind = "forgetful"

    with pytest.raises(NotImplementedError, match="Forgetful must define predict_proba"):
        Forgetful().predict_proba(np.zeros((1, 2), np.float32))


def test_proportional_assistant_turns_remembered_losses_into_the_kernels_probabilities():
    """What the Assistant process computes from its loss memory (``predict_proba`` on the
    memory's columns, then ``calibrate``) is the keep rule the bound applies to the same
    losses: the pipeline adds nothing of its own, down to float32 rounding."""
    from autoassist.assistant.loss_memory import LossMemory
    from autoassist.assistant.models import ProportionalAssistant
    from autoassist.kernels import proportional_scores

    rng = np.random.default_rng(0)
    losses = rng.lognormal(-2.5, 2.0, 5000).astype(np.float32)  # many near zero, a long tail
    memory = LossMemory(len(losses))
    memory.update(np.arange(len(losses)), losses)
    rows = memory.features(np.arange(len(losses)), float(losses.mean()))
    model = ProportionalAssistant(2, keep=1 / 3, floor=0.1)
    ours = model.calibrate(model.predict_proba(rows))
    bound = proportional_scores(losses.astype(np.float64), 1 / 3, 0.1)
    np.testing.assert_allclose(ours, bound, atol=1e-6)
    assert abs((0.1 + 0.9 * ours).mean() - 1 / 3) < 1e-4


def test_memory_assistant_scores_exactly_the_last_loss_against_the_mean():
    """assistant="memory": p = 1[last loss > running mean], 1 for instances never reported;
    it needs the loss memory, and its (empty) state resumes."""
    from autoassist.assistant.models import MemoryAssistant

    with pytest.raises(ValueError, match="loss_history"):
        ShrinkConfig(assistant="memory", loss_history=False)
    m = MemoryAssistant(4)
    X = np.array([[9, 9, 1, 0.5], [9, 9, 1, -0.2], [9, 9, 0, 0.0]], np.float32)
    assert m.predict_proba(X).tolist() == [1.0, 0.0, 1.0]
    m.load_state_dict(m.state_dict())
    data = TensorDataset(torch.arange(N))
    loss = torch.linspace(0.0, 2.0, N)  # instance i's loss, the same every epoch
    loader = autoassist.wrap(DataLoader(data, batch_size=100, shuffle=True), assistant="memory",
                             sync=True, floor=0.2)
    with loader:
        for epoch in range(3):
            loader.set_epoch(epoch)
            for (idx,) in loader:
                loader.report(loss[idx])
        scores, _ = loader.engine.state.snapshot()
        seen = loader.engine.state.have.astype(bool)
        mean = loader.telemetry[-1]["assistant_loss_mean"]
        # it reads no features: none are computed, stored (no feature file) or checkpointed
        assert loader.engine.dim == 0 and loader.engine.state.features.shape == (N, 0)
        assert not hasattr(loader.engine.state, "feature_path")
        assert len(loader.state_dict()["engine"]["feature_ids"]) == 0
    assert seen.all()
    np.testing.assert_array_equal(scores, (loss.numpy() > mean).astype(np.float32))
    # features given anyway are not silently taken as used
    with pytest.warns(UserWarning, match="features passed are not used"):
        unused = autoassist.wrap(DataLoader(data, batch_size=100), assistant="memory",
                                 features=torch.zeros(N, 3))
    with unused:
        assert unused.engine.dim == 0
