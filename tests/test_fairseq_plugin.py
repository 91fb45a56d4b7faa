"""The fairseq plugin on a real corpus (bible.db verses) with a tiny transformer.

Kept small for CI: a 400-pair corpus, a 1-layer 64-wide transformer, a few short fairseq-train
runs (each a few seconds of training plus fairseq's start-up).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require

require("fairseq", "fairseq")  # skips here without the extra; fails under CI=1

from autoassist.bench.translation_corpus import (  # noqa: E402
    CorpusSpec,
    load_verse_pairs,
    prepare_corpus,
    split_pairs,
)
from autoassist.cli import fairseq_user_dir  # noqa: E402

TINY = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
        "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
        "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
        "--share-all-embeddings", "--label-smoothing", "0.1"]
TRAIN = ["--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "1024", "--cpu",
         "--num-workers", "0", "--seed", "1", "--log-format", "simple", "--log-interval", "5",
         "--no-progress-bar"]
PLUGIN = ["--task", "autoassist_translation",
          "--criterion", "autoassist_label_smoothed_cross_entropy"]


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    out = tmp_path_factory.mktemp("bible")
    return prepare_corpus(out, CorpusSpec(train_pairs=400, valid_pairs=100, max_words=30,
                                          vocab_size=600))


def _fairseq_train(data_bin, save_dir, *extra):
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(data_bin), "--user-dir",
           fairseq_user_dir(), *PLUGIN, *TINY, *TRAIN, "--save-dir", str(save_dir), *extra]
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr + done.stdout


def _model(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _in_process_task(data_bin, *extra):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data_bin), "--user-dir", fairseq_user_dir(), *TINY, *TRAIN,
                 "--dropout", "0", *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    return cfg, task


# -- the corpus ------------------------------------------------------------------------------------
def test_corpus_is_split_by_book_and_aligned():
    pairs = load_verse_pairs("de", "en")
    assert len(pairs) > 30000  # 31,102 verses, both translations complete
    spec = CorpusSpec(train_pairs=None, max_words=50)
    splits = split_pairs(pairs, spec)
    held = set(spec.valid_books) | set(spec.test_books)
    train_books = {b for b, _, _ in pairs} - held
    assert len(train_books) == 66 - len(held)
    by_text = {(s, t): b for b, s, t in pairs}
    assert all(by_text[p] in spec.test_books for p in splits["test"])
    assert all(by_text[p] in spec.valid_books for p in splits["valid"])
    assert all(by_text[p] not in held for p in splits["train"])
    # the same verse in both languages: John 3:16 is there, German then English
    assert any("Gott" in s and "God" in t and "Welt" in s and "world" in t
               for _, s, t in pairs if len(s) < 200)
    with pytest.raises(ValueError, match="unknown translation"):
        load_verse_pairs("klingon", "en")
    # Spanish (Reina-Valera 1909), the benchmark's second pair: every verse aligned, John 3:16
    es = load_verse_pairs("es", "en")
    assert len(es) > 30000
    assert any("Dios" in s and "God" in t and "mundo" in s and "world" in t
               for b, s, t in es if b == 43 and len(s) < 200)
    with pytest.raises(ValueError, match="train_pairs"):
        split_pairs(pairs, CorpusSpec(train_pairs=10**6))


def test_text_features_are_tfidf_rows_plus_length():
    from autoassist.assistant.text_features import sentence_pair_features

    src = [[5, 6, 7], [5, 5, 9, 10, 11, 12], [8]]
    tgt = [[1, 2], [3, 4, 4, 4], [2]]
    f = sentence_pair_features(src, tgt, dim=16)
    assert f.shape == (3, 16 + 16 + 2) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f[:, :16], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(f[:, 16:32], axis=1), 1.0, rtol=1e-5)
    assert f[1, 32] > f[0, 32] > f[2, 32]  # longer source, larger length feature
    np.testing.assert_allclose(f[:, 32].mean(), 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="aligned"):
        sentence_pair_features(src, tgt[:2])


# -- the criterion and the batches -------------------------------------------------------------
def test_per_sentence_losses_sum_to_fairseq_label_smoothed_loss(data_bin):
    from fairseq.criterions.label_smoothed_cross_entropy import (
        LabelSmoothedCrossEntropyCriterion,
    )

    cfg, task = _in_process_task(data_bin, *PLUGIN, "--aa-warmup-epochs", "1", "--aa-sync")
    try:
        model = task.build_model(cfg.model)
        ours = task.build_criterion(cfg.criterion)
        stock = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
        itr = task.get_batch_iterator(task.dataset("train"), max_tokens=1024, seed=1, epoch=1,
                                      max_positions=(1024, 1024))
        sample = next(itr.next_epoch_itr(shuffle=False))
        model.train()
        task._reporting = True  # as inside task.train_step
        loss, size, log = ours(model, sample)
        task._reporting = False
        ref_loss, ref_size, ref_log = stock(model, sample)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(log["nll_loss"], ref_log["nll_loss"], rtol=1e-5, atol=1e-4)
        assert size == ref_size
        # and the Assistant got one loss per sentence of the batch
        assert task.engine.reported_instances == len(sample["id"])
    finally:
        task.close()


def test_batches_equal_stock_translation_when_everything_is_kept(data_bin):
    from fairseq.tasks.translation import TranslationTask

    _, task = _in_process_task(data_bin, *PLUGIN, "--aa-floor", "1.0", "--aa-warmup-epochs", "0")
    try:
        stock = TranslationTask(task.cfg, task.src_dict, task.tgt_dict)
        stock.datasets["train"] = task.dataset("train")
        for multiple in (1, 8):
            kw = dict(max_tokens=300, max_positions=(1024, 1024), seed=3, epoch=2,
                      required_batch_size_multiple=multiple, disable_iterator_cache=True)
            ours = [b.tolist() for b in task.get_batch_iterator(task.dataset("train"), **kw)
                    .frozen_batches]
            ref = [list(b) for b in stock.get_batch_iterator(stock.dataset("train"), **kw)
                   .frozen_batches]
            assert len(ours) > 10
            if multiple == 1:
                assert ours == [[int(i) for i in b] for b in ref]
            else:  # stock drops its last batch when 8 does not divide it (fairseq #5036)
                assert ours[: len(ref)] == [[int(i) for i in b] for b in ref]
                kept = sorted(i for b in ours for i in b)
                assert kept == list(range(len(task.dataset("train"))))
    finally:
        task.close()


def test_random_subset_control_keeps_the_given_fraction_at_random(data_bin):
    """The translation benchmark's control: each epoch a uniformly random subset of the given
    size, in stock order, batched as the plugin batches what it keeps."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.tasks.translation import TranslationTask

    from autoassist.bench.fairseq_random_subset import LAB_USER_DIR
    from autoassist.pipelines.fairseq_task import stock_order

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data_bin), "--user-dir", LAB_USER_DIR, "--task", "random_subset_translation",
        "--kept-fractions", "1,0.5,0.5", "--criterion", "label_smoothed_cross_entropy",
        *TINY, *TRAIN])
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    task.load_dataset("train")
    stock = TranslationTask(task.cfg, task.src_dict, task.tgt_dict)
    stock.datasets["train"] = task.dataset("train")
    kw = dict(max_tokens=300, max_positions=(1024, 1024), seed=3, disable_iterator_cache=True)

    def epoch(task_, e):
        return [b.tolist() for b in task_.get_batch_iterator(task_.dataset("train"), epoch=e,
                                                             **kw).frozen_batches]

    n = len(task.dataset("train"))
    assert epoch(task, 1) == [[int(i) for i in b] for b in epoch(stock, 1)]  # fraction 1
    second, third = epoch(task, 2), epoch(task, 3)
    kept2, kept3 = sorted(i for b in second for i in b), sorted(i for b in third for i in b)
    assert len(kept2) == len(set(kept2)) == round(0.5 * n) == len(kept3)
    assert kept2 != kept3  # a fresh draw each epoch
    # in stock order, batched consecutively as the plugin batches what it keeps
    order = stock_order(task, task.dataset("train"), 2, task._batching)
    assert [i for b in second for i in b] == [int(i) for i in order if i in set(kept2)]
    assert epoch(task, 2) == second  # and the same draw again for the same (seed, epoch)
    with pytest.raises(ValueError, match="one fraction per epoch"):
        epoch(task, 4)


# -- real fairseq-train runs -----------------------------------------------------------------------
def test_loss_profile_reads_each_pairs_loss_as_fairseq_validate_sums_them(data_bin, tmp_path):
    """``loss_profile.translation_losses``: per-pair per-token losses of a checkpoint on its
    training set, which, weighted by tokens, give the loss fairseq-validate reports there."""
    import math
    import re

    from autoassist.bench.loss_profile import translation_losses

    save = tmp_path / "stock"
    stock = ["--task", "translation", "--criterion", "label_smoothed_cross_entropy"]
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(data_bin), *stock, *TINY, *TRAIN,
           "--max-epoch", "2", "--save-dir", str(save), "--no-epoch-checkpoints"]
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = save / "checkpoint_last.pt"
    done = subprocess.run([sys.executable, "-m", "fairseq_cli.validate", str(data_bin), *stock,
                           "--path", str(checkpoint), "--valid-subset", "train", "--cpu",
                           "--max-tokens", "1024", "--label-smoothing", "0.1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    loss = float(re.search(r"\| loss ([0-9.]+)", out).group(1))  # base 2, per token
    nll = float(re.search(r"\| nll_loss ([0-9.]+)", out).group(1))

    losses = translation_losses(data_bin, checkpoint)
    n = 400  # the fixture's training pairs, none filtered by size
    assert len(losses["nll"]) == n and np.isfinite(losses["nll"]).all()
    tokens = losses["tokens"]
    per_token = {k: float((losses[k] * tokens).sum() / tokens.sum() / math.log(2))
                 for k in ("nll", "smoothed")}
    assert per_token["nll"] == pytest.approx(nll, abs=2e-3)
    assert per_token["smoothed"] == pytest.approx(loss, abs=2e-3)
    assert (losses["smoothed"] > losses["nll"]).mean() > 0.5  # smoothing adds to most pairs
    with pytest.raises(FileNotFoundError, match="not found"):
        translation_losses(data_bin, tmp_path / "none.pt")


@pytest.mark.slow
def test_fairseq_train_shrinks_and_resumes_mid_epoch_bit_identically(data_bin, tmp_path):
    full = tmp_path / "full"
    log = _fairseq_train(data_bin, full, "--max-epoch", "3", "--aa-sync",
                         "--save-interval-updates", "5")
    # the plugin was loaded through --user-dir and really shrank epochs 2 and 3
    assert "task: AutoAssistTranslationTask" in log
    assert "criterion: AutoAssistLabelSmoothedCrossEntropy" in log
    kept = [line for line in log.splitlines() if "autoassist: epoch" in line and " kept " in line]
    assert len(kept) == 3 and "(warmup)" in kept[0] and "(shrink)" in kept[1]
    fractions = [float(line.split(" kept ")[1].split("%")[0]) for line in kept]
    # each epoch that ran says what it trains on, and only those: fairseq builds epoch 4's
    # batches after epoch 3 but never runs it
    trains = [line.split("autoassist: epoch ")[1].split()[0] for line in log.splitlines()
              if "autoassist: epoch" in line and " trains on " in line]
    assert trains == ["1", "2", "3"], trains
    assert fractions[0] == 100.0 and all(30.0 <= f < 100.0 for f in fractions[1:])
    # resume from a checkpoint in the middle of epoch 2
    mids = sorted(full.glob("checkpoint_2_*.pt"))
    assert mids, sorted(p.name for p in full.iterdir())
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(mids[0], resumed / "checkpoint_last.pt")
    log2 = _fairseq_train(data_bin, resumed, "--max-epoch", "3", "--aa-sync",
                          "--save-interval-updates", "5")
    assert "Loaded checkpoint" in log2
    a, b = _model(full / "checkpoint3.pt"), _model(resumed / "checkpoint3.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # fairseq's own checkpoint holds more than tensors (its config objects): weights_only=False
    # is for fairseq's part; the plugin's extra state alone loads with torch's default
    state = torch.load(resumed / "checkpoint3.pt", weights_only=False)["extra_state"]
    torch.save(state["AutoAssistTranslationTask"], tmp_path / "plugin_state.pt")
    engine = torch.load(tmp_path / "plugin_state.pt")["engine"]
    assert engine["plan"]["epoch"] == 2 and engine["plan"]["reason"] == "shrink"


def test_bad_options_give_clear_errors(data_bin, tmp_path):
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(data_bin), "--user-dir",
           fairseq_user_dir(), *PLUGIN, *TINY, *TRAIN, "--save-dir", str(tmp_path),
           "--aa-anneal-epochs", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "--aa-anneal-epochs needs the training budget: pass --max-epoch" in done.stderr
    assert Path(fairseq_user_dir()).is_dir()


# -- distributed: every rank keeps the same set ----------------------------------------------------
def _dist_rank(rank: int, world: int, init_file: str, data_bin: str, out_dir: str) -> None:
    import datetime
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    _, task = _in_process_task(data_bin, *PLUGIN, "--aa-warmup-epochs", "0", "--aa-sync",
                               "--aa-floor", "0.3")
    try:
        n = len(task.dataset("train"))
        # rank-specific scores: without the broadcast every rank would keep a different set
        scores = np.random.default_rng(100 + rank).random(n).astype(np.float32)
        task.engine.state.load_scores(scores, 7)
        itr = task.get_batch_iterator(task.dataset("train"), max_tokens=512, seed=1, epoch=2,
                                      max_positions=(1024, 1024), num_shards=world,
                                      shard_id=rank)
        batches = [b.tolist() for b in itr.frozen_batches]
        mine = [int(i) for s in itr.next_epoch_itr(shuffle=True) for i in s.get("id", [])]
        plan = task.engine.current
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"batches": batches, "mine": mine, "n": n,
                       "kept": np.flatnonzero(plan.mask).tolist(),
                       "rank0_scores": scores.tolist() if rank == 0 else None}, f)
        dist.barrier()
    finally:
        task.close()
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_select_the_same_pairs_and_shard_the_batches(data_bin, tmp_path):
    import json

    import torch.multiprocessing as mp

    from autoassist.kernels import keep_mask

    mp.spawn(_dist_rank, args=(2, str(tmp_path / "init"), str(data_bin), str(tmp_path)),
             nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["batches"] == r1["batches"]  # same kept pairs, same batches on both ranks
    assert r0["kept"] == r1["kept"]
    expected, _ = keep_mask(np.asarray(r0["rank0_scores"], np.float32), 0.3, 1, 1)
    assert r0["kept"] == np.flatnonzero(expected).tolist()  # chosen from rank 0's scores
    assert 0.3 * r0["n"] < len(r0["kept"]) < r0["n"]
    assert not set(r0["mine"]) & set(r1["mine"])  # fairseq's sharding: disjoint batches
    assert sorted(r0["mine"] + r1["mine"]) == sorted(r0["kept"])


def test_aa_config_file_is_the_base_and_flags_override_it(data_bin, tmp_path):
    """Precedence: a flag given on the command line > the --aa-config file > the default, also
    when the flag's value happens to be the default (it was still asked for)."""
    from autoassist.config import ShrinkConfig

    default = ShrinkConfig()
    path = ShrinkConfig(floor=0.55, warmup_epochs=2, reweight=True, label_ema=0.05,
                        assistant="logistic", feature_dim=16,
                        assistant_lr=0.05).to_file(tmp_path / "shrink.toml")
    _, task = _in_process_task(data_bin, *PLUGIN, "--aa-config", str(path),
                               "--aa-warmup-epochs", "3", "--aa-sync", "--aa-no-reweight",
                               "--aa-feature-dim", str(default.feature_dim),
                               "--aa-assistant-lr", str(default.assistant_lr))
    try:
        c = task.shrink_config
        assert (c.floor, c.label_ema, c.assistant) == (0.55, 0.05, "logistic")  # the file
        assert c.warmup_epochs == 3 and c.sync  # flags given on the command line win
        assert c.reweight is False  # an off-switch beats the file's True
        # ... even when the value given is the default
        assert (c.feature_dim, c.assistant_lr) == (default.feature_dim, default.assistant_lr)
        assert task.engine.dim == 2 * default.feature_dim + 2
        assert c.seed == 1  # fairseq's --seed
        assert task.engine.config is c
    finally:
        task.close()


def test_a_tuned_config_file_round_trips_into_the_fairseq_options(data_bin, tmp_path):
    """``autoassist tune`` writes tuned.toml with ``to_config`` + ``to_file``; the plugin's
    ``--aa-config`` reads every setting back (seed and budget come from fairseq's own flags).

    Every setting in the file differs from its default (checked below), so a setting the plugin
    took from its own default instead of the file would fail the round trip."""
    import dataclasses

    from autoassist.config import ShrinkConfig
    from autoassist.tuning.space import to_config

    tuned = to_config({"floor": 0.37, "adaptive_floor": True, "anneal_fraction": 0.25,
                       "reweight": False, "assistant": "sgd", "label_ema": 0.02,
                       "warmup_epochs": 2}, ShrinkConfig(), epochs=8)
    tuned = tuned.replace(rank_power=2.0, first_scores_wait=0.5, loss_history=False,
                          reweight_scale="sum",
                          feature_dim=16, label_buckets=4, assistant_lr=0.05,
                          assistant_threads=2, kernel_threads=1, queue_size=32, send_every=2,
                          sync=True, max_restarts=1, trace_dir=str(tmp_path / "trace"),
                          feature_dir=str(tmp_path))
    default = ShrinkConfig()
    not_in_file = {"seed", "extra"}  # seed: fairseq's --seed; extra: never written
    own_assistant = {"keep"}  # the proportional Assistant's alone: its own round trip below
    same = [f.name for f in dataclasses.fields(ShrinkConfig)
            if f.name not in not_in_file | own_assistant
            and getattr(tuned, f.name) == getattr(default, f.name)]
    assert not same, f"give these settings non-default values so the test can see them: {same}"
    path = tuned.to_file(tmp_path / "tuned.toml")
    _, task = _in_process_task(data_bin, *PLUGIN, "--aa-config", str(path), "--max-epoch", "8")
    try:
        got = task.shrink_config
        for f in dataclasses.fields(ShrinkConfig):
            if f.name not in not_in_file:
                assert getattr(got, f.name) == getattr(tuned, f.name), f.name
        assert got.seed == 1 and got.anneal_epochs == 2 and got.epochs == 8
        # the file's feature_dim sizes the Assistant's features: 16 buckets a side + 2 lengths
        assert task.engine.dim == 2 * 16 + 2
    finally:
        task.close()
    proportional = ShrinkConfig(assistant="proportional", keep=0.4, floor=0.1)
    path = proportional.to_file(tmp_path / "proportional.toml")
    _, task = _in_process_task(data_bin, *PLUGIN, "--aa-config", str(path), "--max-epoch", "8")
    try:
        got = task.shrink_config
        assert (got.assistant, got.keep, got.floor) == ("proportional", 0.4, 0.1)
        assert task.engine.dim == 0  # it reads no features: no hashing pass
    finally:
        task.close()
