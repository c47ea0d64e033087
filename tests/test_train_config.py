"""TrainConfig: precedence of sources, TR-4896's environment interface, clear errors."""

from pathlib import Path

import pytest

from lanex_trainer.config import ConfigError, build_config

BASE = {"data_root": "/data", "output_dir": "/out"}


def test_tr4896_environment_sets_the_same_config_as_the_equivalent_flags():
    environ = {"USE_WORKERS": "false", "NUM_WORKERS": "4", "BATCH_SIZE": "33", "USE_VAL": "0", "VAL_BATCH_SIZE": "99",
               "ENABLE_SNAPSHOT": "true", "PVC_NAME": "lane-pvc"}
    from_env = build_config(environ=environ, overrides=BASE)
    from_flags = build_config(environ={}, overrides={**BASE, "use_workers": False, "loader_workers": 4, "batch_size": 33,
                                                      "validation": False, "val_batch_size": 99,
                                                      "enable_snapshot": True, "pvc_name": "lane-pvc"})
    assert from_env == from_flags


def test_flags_override_environment_which_overrides_file(tmp_path: Path):
    config_file = tmp_path / "train.yaml"
    config_file.write_text("batch_size: 8\nepochs: 3\nloader_workers: 1\n")
    cfg = build_config(file=config_file, environ={"BATCH_SIZE": "16", "NUM_WORKERS": "2"},
                       overrides={**BASE, "batch_size": 4})
    assert (cfg.batch_size, cfg.loader_workers, cfg.epochs) == (4, 2, 3)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="BATCH_SIZE='many'"):
        build_config(environ={"BATCH_SIZE": "many"}, overrides=BASE)


def test_invalid_field_is_reported_with_its_name():
    with pytest.raises(ConfigError, match="height: .*multiple of 16"):
        build_config(environ={}, overrides={**BASE, "height": 100})
    with pytest.raises(ConfigError, match="batch_size"):
        build_config(environ={}, overrides={**BASE, "batch_size": 0})
    with pytest.raises(ConfigError, match="unknown_knob"):
        build_config(environ={}, overrides={**BASE, "unknown_knob": 1})


def test_missing_config_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="nope.yaml: not found"):
        build_config(file=tmp_path / "nope.yaml", environ={}, overrides=BASE)


def test_fingerprint_ignores_paths_but_not_learning_settings():
    a = build_config(environ={}, overrides=BASE)
    b = build_config(environ={}, overrides={"data_root": "/elsewhere", "output_dir": "/x"})
    c = build_config(environ={}, overrides={**BASE, "lr": 0.5})
    longer = build_config(environ={}, overrides={**BASE, "epochs": 99, "loader_workers": 0})
    assert longer.fingerprint() == a.fingerprint()
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_lease_settings_change_no_fingerprint_and_a_stale_time_below_three_heartbeats_is_refused(tmp_path: Path):
    base = {"data_root": tmp_path, "output_dir": tmp_path / "o"}
    default = build_config(environ={}, overrides=base)
    patient = build_config(environ={}, overrides={**base, "lease_stale_s": 600, "lease_heartbeat_s": 30})
    assert (default.lease_heartbeat_s, default.lease_stale_s) == (10.0, 120.0)
    assert patient.fingerprint() == default.fingerprint()
    assert build_config(environ={"LANEX_LEASE_STALE_S": "600"}, overrides=base).lease_stale_s == 600  # spec.training.env
    with pytest.raises(ConfigError, match=r"lease_stale_s \(20\) must be at least 3 x lease_heartbeat_s \(10\)"):
        build_config(environ={}, overrides={**base, "lease_stale_s": 20})
