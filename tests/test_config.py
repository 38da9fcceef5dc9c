"""The typed config: YAML files merged, CLI overrides, clear errors naming key and file."""
from __future__ import annotations

from pathlib import Path

import pytest

from cxrspark.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_load_and_overrides_apply():
    cfg = load_config([REPO / "conf/ingest.yaml", REPO / "conf/sources.yaml"],
                      ["ingest.image_size=256", "ingest.split.ratios={train: 0.8, test: 0.2}",
                       "spark.conf={spark.executor.memory: 4g}"])
    assert cfg.ingest.image_size == 256
    assert cfg.ingest.split.ratios == {"train": 0.8, "test": 0.2}
    assert cfg.spark.conf == {"spark.executor.memory": "4g"}
    assert [s.name for s in cfg.sources][:2] == ["cohen", "figure1"]
    assert cfg.ingest.dedup.bits == 40 and cfg.ingest.dedup.verify.min_detail == 0.45  # from the file
    for name in ("demo-sources.yaml", "sources-devdata.yaml"):
        assert load_config([REPO / "conf" / name]).sources


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("ingest:\n  image_sise: 224\n")
    with pytest.raises(ConfigError) as exc:
        load_config([f])
    assert "ingest.image_sise" in str(exc.value) and str(f) in str(exc.value)


def test_wrong_type_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("ingest:\n  dedup:\n    verify:\n      min_inliers: six\n")
    with pytest.raises(ConfigError) as exc:
        load_config([f])
    msg = str(exc.value)
    assert "ingest.dedup.verify.min_inliers" in msg and str(f) in msg and "int" in msg


def test_override_errors_name_the_command_line():
    with pytest.raises(ConfigError) as exc:
        load_config([], ["ingest.image_size=big"])
    assert "ingest.image_size" in str(exc.value) and "--set" in str(exc.value)
    with pytest.raises(ConfigError):
        load_config([], ["no_equals_sign"])


def test_later_files_win_and_values_are_validated(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("ingest:\n  image_size: 80\n  contrast: clahe\n")
    b.write_text("ingest:\n  image_size: 331\n")
    cfg = load_config([a, b])
    assert (cfg.ingest.image_size, cfg.ingest.contrast) == (331, "clahe")
    with pytest.raises(ConfigError, match="resize_mode"):
        load_config([], ["ingest.resize_mode=squash"])
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config([], ["ingest.split.ratios={train: 0.9, test: 0.2}"])
    with pytest.raises(ConfigError, match="unknown classes"):
        load_config([], ["ingest.classes=[COVID-19, Tuberculosis]"])
    with pytest.raises(ConfigError, match="missing key 'sources\\[0\\].kind'"):
        load_config([], ["sources=[{name: x, root: y}]"])


def test_jobs_share_the_config_options_and_refuse_a_bad_key(tmp_path):
    import argparse
    import subprocess
    import sys

    from cxrspark.config import add_config_arguments, config_from_arguments

    ap = argparse.ArgumentParser()
    add_config_arguments(ap, [str(REPO / "conf/train.yaml")], "train.epochs=5")
    cfg = config_from_arguments(ap.parse_args(["--set", "train.epochs=7"]))
    assert cfg.train.epochs == 7 and cfg.train.model == "seed_cnn"  # defaults file read, override applied
    extra = tmp_path / "extra.yaml"
    extra.write_text("train: {model: vgg_dcnn}\n")
    args = ap.parse_args(["--config", str(REPO / "conf/train.yaml"), "--config", str(extra)])
    assert config_from_arguments(args).train.model == "vgg_dcnn"  # later files win
    with pytest.raises(ConfigError, match="train.bogus"):
        config_from_arguments(ap.parse_args(["--set", "train.bogus=1"]))
    for job in ("jobs/train.py", "jobs/ingest.py", "jobs/train_segmenter.py", "jobs/evaluate.py", "jobs/predict.py",
                "jobs/loso.py"):
        proc = subprocess.run([sys.executable, job, "--set", "train.bogus=1"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and "unknown key 'train.bogus'" in proc.stderr, (job, proc.stderr)


def test_every_problem_is_reported_with_its_key_and_origin(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("ingest:\n  image_size: 8\n  lungs: {min_area: 0.9}\ntrain:\n  epochs: true\n")
    with pytest.raises(ConfigError) as exc:
        load_config([f], ["train.optimizer=rmsprop"])
    lines = str(exc.value).splitlines()
    assert len(lines) == 4, lines
    by_key = {line.split("'")[1]: line for line in lines}
    assert str(f) in by_key["ingest.image_size"] and "16" in by_key["ingest.image_size"]
    assert str(f) in by_key["ingest.lungs"] and "min_area" in by_key["ingest.lungs"]  # a rule across keys
    assert str(f) in by_key["train.epochs"] and "bool" in by_key["train.epochs"]  # true is not 1
    assert "--set" in by_key["train.optimizer"] and "adam, sgd" in by_key["train.optimizer"]


def test_round_trip_and_coercions():
    from cxrspark.config import config_from_dict, to_dict

    cfg = load_config([REPO / "conf/ingest.yaml"], ["spark.conf={spark.executor.cores: 4}", "train.learning_rate=1"])
    assert cfg.spark.conf == {"spark.executor.cores": "4"}  # Spark settings are text
    assert isinstance(cfg.train.learning_rate, float)  # an int is a valid float, stored as one
    assert config_from_dict(to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="'ingest.image_size'"):
        config_from_dict({**to_dict(cfg), "ingest": {**to_dict(cfg.ingest), "image_size": "224"}})


def test_a_partial_section_keeps_its_parents_defaults():
    cfg = load_config([], ["segmenter.mlflow.run_name=unet-1", "spark.conf={spark.sql.adaptive.enabled: true}"])
    # MlflowConfig's own default experiment is "cxrspark"; the segmenter's is "cxrspark-segmenter"
    assert (cfg.segmenter.mlflow.experiment, cfg.segmenter.mlflow.run_name) == ("cxrspark-segmenter", "unet-1")
    assert cfg.spark.conf == {"spark.sql.adaptive.enabled": "true"}  # Spark's spelling of a YAML boolean
