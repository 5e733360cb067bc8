import json

import pytest

from rebalance_torch.config import OFFICIAL_WEIGHTS, TrainConfig, parse_weights


def test_defaults_are_the_official_objective_and_round_trip_through_json(tmp_path):
    config = TrainConfig()
    assert config.weights == OFFICIAL_WEIGHTS
    assert config.stage1_weights == {"itc": 1.0, "itm": 2.0}
    assert TrainConfig.from_json(config.to_json()) == config
    config.replace(distance="mse", tau_clamp=None, seed=3).save(tmp_path / "c.json")
    loaded = TrainConfig.load(tmp_path / "c.json")
    assert (loaded.distance, loaded.tau_clamp, loaded.seed) == ("mse", None, 3)
    assert json.loads((tmp_path / "c.json").read_text())["distance"] == "mse"


def test_weight_of_a_name_left_out_is_zero():
    config = TrainConfig(weights={"itc": 1, "itm": 2})
    assert config.weight("kd", 2) == 0.0 and config.weight("itm", 2) == 2.0 and config.weight("itm", 1) == 2.0
    assert not config.uses_teachers()
    assert TrainConfig().uses_teachers()


@pytest.mark.parametrize("changes, field", [
    ({"batch_size": 1}, "batch_size"),
    ({"lr": -1.0}, "lr"),
    ({"lr": 0.0}, "lr"),
    ({"warmup": 1.5}, "warmup"),
    ({"distance": "kl"}, "distance"),
    ({"tau2": "free"}, "tau2"),
    ({"lam": "softmax"}, "lam"),
    ({"student_relation": "z"}, "student_relation"),
    ({"device": "tpu"}, "device"),
    ({"weights": {"itc": 1, "bogus": 1}}, "bogus"),
    ({"weights": {"itc": -1}}, "weights"),
    ({"weights": {"itc": 0}}, "weights"),
    ({"stage1_weights": {"itc": 1, "kd": 1}}, "stage1_weights"),
    ({"tau_clamp": [0.5, 0.1]}, "tau_clamp"),
    ({"preset": "nope"}, "preset"),
    ({"stage1_steps": 0, "stage2_steps": 0}, "stage"),
    ({"stage1_steps": -3}, "stage1_steps"),
    ({"lam": "sigmoid", "lam_init": 1.0}, "lam_init"),
    ({"threads": 0}, "threads"),
])
def test_bad_values_raise_value_errors_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**changes)


def test_unknown_fields_and_bad_json_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainConfig.from_json("{nope")
    with pytest.raises(ValueError, match="no such file"):
        TrainConfig.load(tmp_path / "missing.json")


def test_parse_weights_and_differences():
    assert parse_weights("itc=1, itm=2,kd=0.5") == {"itc": 1.0, "itm": 2.0, "kd": 0.5}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_weights("itc")
    with pytest.raises(ValueError, match="number"):
        parse_weights("itc=x")
    a, b = TrainConfig(), TrainConfig(lr=0.01, threads=2)
    assert a.differences(b) == {"lr": (a.lr, 0.01), "threads": (1, 2)}
    assert a.differences(b, ignore=("threads",)) == {"lr": (a.lr, 0.01)}
