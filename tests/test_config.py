from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from semhash_spark.config import ConfigError, Config, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_documents_yaml_is_the_builtin_default():
    assert load_config(ROOT / "conf" / "documents.yaml") == Config()


def test_overrides_are_typed():
    cfg = load_config(
        None, ["pretrain.epochs=5", "finetune.lr=3e-4", "model.hidden=[100, 50]", "index.store_counts=false"]
    )
    assert cfg.pretrain.epochs == 5 and cfg.finetune.lr == 3e-4
    assert cfg.model.hidden == (100, 50) and cfg.index.store_counts is False


@pytest.mark.parametrize(
    "override,needle",
    [
        ("pretrain.epoch=5", "pretrain.epoch"),
        ("pretrain.epochs=five", "pretrain.epochs"),
        ("nosection.x=1", "nosection"),
        ("epochs=3", "section.key"),
        ("finetune.noise_std=abc", "finetune.noise_std"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_file_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("pretrain:\n  epochs: 3\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="pretrain.learning_rate"):
        load_config(p)


def test_round_trip_through_dict_and_frozen():
    cfg = load_config(None, ["model.bits=128"])
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.bits = 3
