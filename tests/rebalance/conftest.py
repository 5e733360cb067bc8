"""Helpers shared by the application's tests."""

from pathlib import Path

from rebalance_ref.shapes import make_splits
from rebalance_ref.tokenizer import Tokenizer
from rebalance_torch import checkpoint as ckpt
from rebalance_torch.config import TrainConfig
from rebalance_torch.prepare import build_student


def write_untrained_run(run_dir: Path, n_train: int, n_val: int, n_test: int) -> dict:
    """A run folder holding a fresh (untrained) student's stage-1 `best` checkpoint and its tokenizer, on a small
    text-poor world of the given sizes; returns the world's splits."""
    config = TrainConfig(n_train=n_train, n_val=n_val, n_test=n_test)
    splits = make_splits(config.preset, n_train, n_val, n_test, seed=config.seed)
    tokenizer = Tokenizer.build([c for s in splits.values() for caps in s.captions for c in caps],
                                max_len=config.max_len)
    student = build_student(config, tokenizer)
    state = {"format": ckpt.FORMAT_VERSION, "config": config.to_dict(), "model_config": student.config.to_dict(),
             "student": student.state_dict()}
    ckpt.save_checkpoint(state, ckpt.checkpoint_path(run_dir, 1, "best"))
    tokenizer.save(Path(run_dir) / "tokenizer.json")
    return splits
