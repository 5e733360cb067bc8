"""Training on several processes: two `gloo` processes, each with half of a batch, against one process on the
whole batch (losses and DDP-averaged gradients, float64), and a short two-process torchrun run against the
one-process run with the same global batch."""

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from rebalance_ref.shapes import make_splits
from rebalance_ref.tolerances import PARITY32_ATOL, PARITY32_RTOL, PARITY64_ATOL, PARITY64_RTOL
from rebalance_torch import checkpoint as ckpt
from rebalance_torch.config import OFFICIAL_WEIGHTS, TrainConfig
from rebalance_torch.distributed import DistContext, choose_backend, from_environment
from rebalance_torch.evaluate import encode_split, itm_rerank
from rebalance_torch.models import ModelConfig, Student
from rebalance_torch.objective import Objective, as_numbers, compute_losses
from rebalance_torch.runlog import read_metrics
from rebalance_torch.trainer import train

WORLD = 2
TIMEOUT_S = 300  # a torchrun launch that takes longer is killed (launcher and workers) and the test fails
SMALL_MODEL = {"vision_width": 16, "text_width": 16, "embed_dim": 8, "heads": 2, "vision_depth": 1,
               "text_depth": 1}

# --- the global batch of the equivalence test -----------------------------------------------------------------
# 8 rows, 4 per process; images 0 and 2 have captions in both halves (soft labels across processes); the halves'
# longest captions differ (5 vs 8 tokens), so each process pads its tokens to its own length, as the collate does.
IDX = [0, 0, 1, 2, 2, 3, 0, 4]
LENGTHS = [3, 5, 4, 3, 7, 6, 8, 5]
VOCAB, IMAGE_SIZE, MAX_LEN, IMAGE_DIM, TEXT_DIM = 20, 16, 10, 12, 10
GLOBAL_ITM_SEED = 7          # one ITM stream for every process (itm_negatives="global")
LOCAL_ITM_SEED = 100         # + rank: each process's own ITM stream (itm_negatives="local")
NO_ITM = {k: v for k, v in OFFICIAL_WEIGHTS.items() if k != "itm"}

# The comparisons: name -> stage-2 config. ITM is the one term that is not a function of the global batch: with
# local negatives (official) each process scores its own pairs against negatives from its own rows, so the
# two-process objective is G(global batch) + 2 * mean over processes of ITM(local rows); the test checks exactly
# that. With global negatives every process draws the same negatives over the gathered batch, and the two-process
# objective is the one-process objective itself.
CASES = {
    "full objective, ITM negatives from the gathered batch": TrainConfig(itm_negatives="global"),
    "full objective, ITM negatives from each process's rows (official)": TrainConfig(itm_negatives="local"),
    "wasserstein on [v, t], row weights from the gathered t, no ITM": TrainConfig(
        weights=NO_ITM, distance="wasserstein", student_relation="projected"),
}


def _models(config: TrainConfig):
    """The same float64 student and stage-2 objective in every process (fixed seeds)."""
    model = ModelConfig.preset("tiny", vocab_size=VOCAB, image_size=IMAGE_SIZE, max_len=MAX_LEN, **SMALL_MODEL)
    student = Student(model, seed=3).double()
    width = model.text_width if config.student_relation == "fused" else 2 * model.embed_dim
    objective = Objective(config, model.embed_dim, width, IMAGE_DIM, TEXT_DIM).double()
    return student, objective


def _batch(rows=slice(None)):
    """(images, ids, mask, idx, image teacher, text teacher) of `rows` of the global batch, tokens padded to the
    longest caption among those rows."""
    gen = torch.Generator().manual_seed(11)
    idx = torch.tensor(IDX)
    images = torch.rand(max(IDX) + 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen, dtype=torch.float64)[idx]
    ids = torch.randint(3, VOCAB, (len(IDX), MAX_LEN), generator=gen)
    mask = (torch.arange(MAX_LEN)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    ids = ids * mask
    ids[:, 0] = 1  # [CLS]
    a = torch.randn(len(IDX), IMAGE_DIM, generator=gen, dtype=torch.float64)
    b = torch.randn(len(IDX), TEXT_DIM, generator=gen, dtype=torch.float64)
    images, ids, mask, idx, a, b = (x[rows] for x in (images, ids, mask, idx, a, b))
    longest = int(mask.sum(1).max())
    return images, ids[:, :longest], mask[:, :longest], idx, a, b


def _grads(student, objective) -> dict[str, torch.Tensor | None]:
    named = [("student." + n, p) for n, p in student.named_parameters()]
    named += [("objective." + n, p) for n, p in objective.named_parameters()]
    return {n: None if p.grad is None else p.grad.detach().clone() for n, p in named}


def _itm_seed(config: TrainConfig, rank: int) -> int:
    return GLOBAL_ITM_SEED if config.itm_negatives == "global" else LOCAL_ITM_SEED + rank


def _equivalence(ctx) -> dict:
    """This process's half of the global batch, through DDP, for every case: {case: {"terms", "grads"}}."""
    results = {}
    for name, config in CASES.items():
        student, objective = _models(config)
        step = ctx.data_parallel([student, objective], functools.partial(
            compute_losses, student, objective, config, 2, dist_ctx=ctx))
        generator = torch.Generator().manual_seed(_itm_seed(config, ctx.rank))
        loss, terms = step(*_batch(ctx.rows(len(IDX))), itm_generator=generator)
        loss.backward()
        results[name] = {"terms": as_numbers(terms, ctx), "grads": _grads(student, objective)}
    return results


def _torchrun_main(out_dir: str, run_dir: str) -> None:
    """What each of the two processes runs (`python -m torch.distributed.run --nproc_per_node=2 -m
    tests.rebalance_torch.test_distributed OUT RUN`): the equivalence cases on its half of the batch, saved to
    OUT/rank{r}.pt, then `python -m rebalance train --out RUN --resume` (one launch keeps the test short)."""
    from rebalance.cli.main import cli

    torch.set_num_threads(1)
    ctx = from_environment("cpu", "gloo", timeout_s=TIMEOUT_S)
    try:
        torch.save(_equivalence(ctx), Path(out_dir) / f"rank{ctx.rank}.pt")
        cli.main(["train", "--out", run_dir, "--resume", "--threads", "1", "--json"], prog_name="rebalance")
        # (exits with SystemExit when done)
    finally:
        ctx.close()


def _reference(config: TrainConfig):
    """One process on the whole batch: (terms, gradients) of the objective two processes should compute."""
    student, objective = _models(config)
    if config.itm_negatives == "global" or not config.weight("itm", 2):
        total, terms = compute_losses(student, objective, config, 2, *_batch(),
                                      itm_generator=torch.Generator().manual_seed(_itm_seed(config, 0)))
    else:  # G over the whole batch + the mean of each half's ITM with that half's negatives and stream
        total, terms = compute_losses(student, objective, config.replace(weights=NO_ITM), 2, *_batch())
        itm_only = config.replace(weights={"itm": config.weight("itm", 2)})
        halves = [compute_losses(student, objective, itm_only, 2, *_batch(slice(4 * r, 4 * r + 4)),
                                 itm_generator=torch.Generator().manual_seed(_itm_seed(config, r)))
                  for r in range(WORLD)]
        total = total + sum(h[0] for h in halves) / WORLD
        terms["itm"] = sum(h[1]["itm"] for h in halves) / WORLD
        terms["loss"] += sum(h[1]["loss"] for h in halves) / WORLD
    total.backward()
    return as_numbers(terms), _grads(student, objective)


def _quiet(_message):
    pass


# --- a short run: two processes under torchrun vs one process ---------------------------------------------------

# Test metrics that rank (R@K, NDCG) are step functions of the scores: on this barely trained student some
# captions' cosines differ by ~6e-8 (one float32 ulp), the two runs' embeddings by ~1.2e-7, so a near-tie can
# swap places. Such metrics may differ by one query's worth: 100 / (queries of the smallest query set; I2I and
# T2T use one query per test image). Measured: up to 4.0 points (attr_t2t@20) with identical cross-modal recall.
RANKING_METRICS = ("cos_", "itm_", "rouge_", "attr_", "uni_")
RUN = TrainConfig(n_train=16, n_val=8, n_test=8, stage1_steps=4, stage2_steps=4, batch_size=8, eval_every=2,
                  k_test=4, model_overrides=SMALL_MODEL, lr=3e-3, itm_negatives="global")
RANKING_TOL = 100 / RUN.n_test


def _run_config(folder: Path) -> TrainConfig:
    """RUN with random teacher features written to `folder` (no teacher training)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_split = make_splits(RUN.preset, RUN.n_train, RUN.n_val, RUN.n_test, seed=RUN.seed,
                              size=RUN.image_size)["train"]
    captions = len(train_split.pairs()[0])
    np.save(folder / "train_image.npy", rng.standard_normal((captions, 12)).astype(np.float32))
    np.save(folder / "train_text.npy", rng.standard_normal((captions, 10)).astype(np.float32))
    return RUN.replace(teacher_dir=str(folder))


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One torchrun launch of two gloo processes (see `_torchrun_main`), after one process has trained the first
    2 steps of stage 1 of the run they finish."""
    root = tmp_path_factory.mktemp("distributed")
    config = _run_config(root / "teachers")
    run_dir = root / "two"
    train(config, run_dir, progress=False, log=_quiet, stop_after=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "-m", "tests.rebalance_torch.test_distributed", str(root), str(run_dir)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers
        process.communicate()
        pytest.fail(f"torchrun with {WORLD} processes did not finish within {TIMEOUT_S} s")
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return {"config": config, "run_dir": run_dir, "summary": json.loads(stdout),  # process 0 alone prints
            "results": [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_on_halves_equal_one_process_on_the_batch(launched, case):
    config = CASES[case]
    terms, grads = _reference(config)
    for rank, results in enumerate(launched["results"]):
        got = results[case]
        assert set(got["terms"]) == set(terms)
        for key, value in terms.items():
            np.testing.assert_allclose(got["terms"][key], value, rtol=PARITY64_RTOL, atol=PARITY64_ATOL,
                                       err_msg=f"{case}: {key} on process {rank}")
        # the same parameters receive gradients (weight-0 terms leave theirs None), with the same values
        assert {n for n, g in got["grads"].items() if g is None} == {n for n, g in grads.items() if g is None}
        for name, grad in grads.items():
            if grad is not None:
                torch.testing.assert_close(got["grads"][name], grad, rtol=PARITY64_RTOL, atol=PARITY64_ATOL,
                                           msg=lambda m, n=name: f"{case}: gradient of {n}: {m}")
    # the gathered batch really spans both processes: ITC over one half alone differs
    student, _ = _models(config)
    alone = compute_losses(student, None, config, 1, *_batch(slice(0, 4)))[1]["itc"]
    assert abs(alone - terms["itc"]) > 1e-3


def _rows(run_dir: Path) -> dict[tuple, dict]:
    """metrics.jsonl by (stage, step, kind); a row logged twice fails."""
    rows = {}
    for row in read_metrics(run_dir):
        key = (row["stage"], row["step"], "val" if "val" in row else "train")
        assert key not in rows, key
        rows[key] = row["val"] if "val" in row else row
    return rows


@pytest.mark.slow
def test_a_two_process_run_resumed_from_one_process_matches_one_process(launched, tmp_path):
    config, two_dir, summary = launched["config"], launched["run_dir"], launched["summary"]
    whole = train(config, tmp_path / "one", progress=False, log=_quiet)
    assert summary["stages"]["1"]["finished"] and summary["stages"]["2"]["finished"]
    one, two = _rows(tmp_path / "one"), _rows(two_dir)  # every row logged once
    assert set(two) == set(one) | {(1, 2, "train")}  # (the interrupted run logged its last step)
    for where, row in one.items():
        for key, value in row.items():
            np.testing.assert_allclose(two[where][key], value, rtol=PARITY32_RTOL, atol=PARITY32_ATOL,
                                       err_msg=f"{where}: {key}")
    first = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "one", 2, "last"))["student"]
    second = ckpt.load_checkpoint(ckpt.checkpoint_path(two_dir, 2, "last"))["student"]
    # Attention key biases are left out: softmax ignores a shift common to all keys, so their gradient is 0 up to
    # rounding, and AdamW turns that rounding noise into lr-sized steps (measured 2.8e-5 apart, on values ~1e-5);
    # they change no output, as the embeddings below show.
    for name, value in first.items():
        if not name.endswith(".k.bias"):
            torch.testing.assert_close(second[name], value, rtol=PARITY32_RTOL, atol=PARITY32_ATOL,
                                       msg=lambda m, n=name: f"{n}: {m}")
    # the test split's embeddings of both best students (everything the metrics are computed from)
    (one_student, _, tokenizer), (two_student, _, _) = (ckpt.load_student(d, "best") for d in (tmp_path / "one",
                                                                                            two_dir))
    split = make_splits(RUN.preset, RUN.n_train, RUN.n_val, RUN.n_test, seed=RUN.seed, size=RUN.image_size)["test"]
    one_emb, two_emb = (encode_split(s, split, tokenizer) for s in (one_student, two_student))
    np.testing.assert_allclose(two_emb.v, one_emb.v, rtol=PARITY32_RTOL, atol=PARITY32_ATOL)
    np.testing.assert_allclose(two_emb.t, one_emb.t, rtol=PARITY32_RTOL, atol=PARITY32_ATOL)
    # the ITM head's re-ranking scores (the logits of the same top-k candidates) agree too
    one_itm, two_itm = (itm_rerank(s, e, RUN.k_test) for s, e in ((one_student, one_emb), (two_student, two_emb)))
    for a, b in zip(one_itm, two_itm, strict=True):
        np.testing.assert_allclose(b, a, rtol=PARITY32_RTOL, atol=PARITY32_ATOL)
    for key, value in whole["test"].items():
        if key.startswith("itm_"):
            # after 8 steps the head gives every candidate nearly the same logit, and the cosines
            # that break its ties differ by a float32 ulp between the runs: its R@K is noise, checked above instead
            continue
        tolerance = RANKING_TOL if key.startswith(RANKING_METRICS) else PARITY32_ATOL
        assert abs(summary["test"][key] - value) <= tolerance + PARITY32_RTOL * abs(value), key
    assert json.loads((two_dir / "eval.json").read_text()) == summary["test"]
    assert not list(two_dir.glob("checkpoints/.*tmp*"))


# --- one process: nothing changes, and bad launches are refused --------------------------------------------------

def test_one_process_creates_no_group_and_changes_nothing():
    ctx = from_environment("cpu", "auto", environ={})
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.active, ctx.seed_parts) == (0, 1, True, False, ())
    assert not dist.is_initialized()
    x = torch.randn(4, 3, requires_grad=True)
    assert ctx.gather(x) is x and ctx.shard(x) is x
    assert ctx.mean({"loss": 1.5}) == {"loss": 1.5}
    step = functools.partial(compute_losses)
    assert ctx.data_parallel([torch.nn.Linear(2, 2)], step) is step
    ctx.barrier()
    ctx.close()
    single = from_environment("cpu", "gloo", environ={"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"})
    assert not single.active and not dist.is_initialized()


def test_shards_split_the_global_batch_in_rank_order():
    shards = [DistContext(rank=r, world_size=4).rows(8) for r in range(4)]
    assert [list(range(8))[s] for s in shards] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert DistContext(rank=1, world_size=2).shard(torch.arange(6)).tolist() == [3, 4, 5]
    assert DistContext(rank=1, world_size=2).seed_parts == (1, 2)
    with pytest.raises(ValueError, match="batch_size must be a multiple of the number of processes"):
        DistContext(rank=0, world_size=3).rows(8)


def test_an_uneven_global_batch_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        train(RUN, tmp_path, dist_ctx=DistContext(rank=0, world_size=3), progress=False, log=lambda m: None)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("environ, backend, device, match", [
    ({"WORLD_SIZE": "two"}, "auto", "cpu", "WORLD_SIZE must be an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "auto", "cpu",
     "RANK must be < WORLD_SIZE"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "auto", "cpu", "RANK: not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "auto", "cpu", "MASTER_ADDR: not set"),
    ({"WORLD_SIZE": "-1"}, "auto", "cpu", "WORLD_SIZE must be >= 0"),
    ({}, "mpi", "cpu", "backend must be one of"),
    ({}, "nccl", "cpu", "nccl needs device cuda"),
])
def test_bad_launches_are_refused_with_the_variable_named(environ, backend, device, match):
    with pytest.raises(ValueError, match=match):
        from_environment(device, backend, environ=environ)
    assert not dist.is_initialized()


def test_backend_follows_the_device():
    assert choose_backend("auto", "cpu") == "gloo"
    assert choose_backend("auto", "cuda") == "nccl"
    assert choose_backend("gloo", "cuda") == "gloo"


if __name__ == "__main__":  # run by torchrun from the `launched` fixture
    _torchrun_main(*sys.argv[1:])
