"""What a user sees when something is wrong: one line naming the problem, never a traceback (unless --debug)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rebalance.cli.main import cli, one_line
from rebalance_torch import checkpoint as ckpt
from rebalance_torch.config import TrainConfig
from rebalance_torch.models import ModelConfig
from rebalance_torch.runlog import RunLog, read_metrics
from rebalance_torch.teacher_features import load_teacher_features


def _run(args, env=None):
    return CliRunner().invoke(cli, args, env=env)


def test_a_bad_config_file_is_one_line_naming_the_field(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"data_dir": 5}))
    result = _run(["train", "--out", str(tmp_path / "run"), "--config", str(config)])
    assert result.exit_code == 1
    assert "data_dir must be a folder path" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_debug_shows_the_traceback_instead(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": 5}))
    result = _run(["--debug", "train", "--out", str(tmp_path / "run"), "--config", str(config)])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    quiet = _run(["train", "--out", str(tmp_path / "run"), "--config", str(config)], env={"REBALANCE_DEBUG": ""})
    assert quiet.exception is None or isinstance(quiet.exception, SystemExit)


def test_an_unexpected_error_is_named_with_its_type_in_one_line():
    assert one_line(ValueError("bad\n  thing")) == "bad thing"
    line = one_line(KeyError("model"))
    assert line.startswith("unexpected KeyError:") and "--debug" in line


@pytest.mark.parametrize("args, option", [(["--stages", "a"], "--stages"), (["--tau-clamp", "a,b"], "--tau-clamp")])
def test_a_malformed_option_names_the_option(tmp_path, args, option):
    result = _run(["train", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output


def test_a_checkpoint_missing_a_field_is_refused_by_name(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"format": ckpt.FORMAT_VERSION, "config": TrainConfig().to_dict(), "student": {}, "stage": 1,
                "step": 3}, path)
    with pytest.raises(ValueError, match="field 'model_config' must be a dict, found nothing"):
        ckpt.require_fields(ckpt.load_checkpoint(path), path, "config", "model_config", "student")


@pytest.mark.parametrize("field, value", [("vocab_size", 10 ** 12), ("image_size", 100_000), ("text_width", 10 ** 6),
                                          ("max_len", 10 ** 6)])
def test_model_sizes_are_bounded_before_anything_is_allocated(field, value):
    with pytest.raises(ValueError, match=f"ModelConfig.{field} must be at most"):
        ModelConfig(**{field: value, **({"patch_size": 8} if field != "image_size" else {"patch_size": 8})})


@pytest.mark.parametrize("scale", [0.0, 1e30, 1e-40])
def test_teacher_features_that_cannot_carry_relations_are_refused(scale):
    features = np.random.default_rng(0).standard_normal((6, 4)) * scale
    with pytest.raises(ValueError, match="teacher features"):
        load_teacher_features(features.astype(np.float32), 6)


def test_a_torn_metrics_log_is_dropped_with_a_warning_and_rewritten_on_resume(tmp_path):
    log = RunLog(tmp_path, lambda _m: None)
    for step in (10, 20):
        log.write({"stage": 1, "step": step, "loss": 1.0})
    with open(log.metrics_path, "a") as handle:
        handle.write('{"stage": 1, "step": 30, "lo')  # a kill mid-append
    with pytest.warns(UserWarning, match="unfinished last line"):
        assert [r["step"] for r in read_metrics(tmp_path)] == [10, 20]
    with pytest.warns(UserWarning):
        log.truncate(1, 20)
    assert log.metrics_path.read_text().endswith("}\n") and len(read_metrics(tmp_path)) == 2
