import pytest
import yaml

from shardguard.config import Config, ConfigError, load_config

from conftest import REPO


def test_default_yaml_documents_exactly_the_defaults():
    data = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    assert load_config(REPO / "configs" / "default.yaml").to_dict() == Config().to_dict()
    # every knob appears in the file, none is left to an implicit default
    defaults = Config().to_dict()
    for section, values in defaults.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if section == "detectors":
                    assert set(value) <= set(data[section][key]), key
                else:
                    assert key in data[section], f"{section}.{key} missing from configs/default.yaml"


def test_every_detector_knob_is_in_default_yaml():
    from shardguard.detectors import REGISTRY

    data = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    for name, cls in REGISTRY.items():
        knobs = set(cls._get_param_names()) - {"random_state"}  # the run's random_state applies
        assert knobs | {"enabled"} == set(data["detectors"][name]), name
        # and the values given there are the class defaults
        for k, v in cls().get_params().items():
            if k != "random_state":
                assert data["detectors"][name][k] == v, (name, k)


def test_unknown_keys_and_bad_types_are_clear_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("near_duplicates:\n  treshold: 0.9\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: near_duplicates: unknown key\(s\) treshold"):
        load_config(p)
    p.write_text("near_duplicates:\n  threshold: high\n")
    with pytest.raises(ConfigError, match="near_duplicates.threshold must be a number"):
        load_config(p)
    p.write_text("detectors:\n  spectral:\n    bogus: 1\n")
    with pytest.raises(ConfigError, match=r"detectors.spectral: unknown knob\(s\) bogus"):
        load_config(p)
    p.write_text("detectors:\n  nope: {}\n")
    with pytest.raises(ConfigError, match="unknown detector"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)
    p.write_text("embed:\n  embedder: magic\n")
    with pytest.raises(ConfigError, match="embed.embedder must be one of"):
        load_config(p)


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("random_state: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_overrides_apply_on_top_of_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("near_duplicates:\n  threshold: 0.7\n")
    cfg = load_config(p, {"near_duplicates.flood_size": 50, "detectors.spectral.enabled": False})
    assert cfg.near_duplicates.threshold == 0.7
    assert cfg.near_duplicates.flood_size == 50
    assert "spectral" not in cfg.enabled_detectors()
    assert "outlier" in cfg.enabled_detectors()


def test_digest_changes_with_any_knob():
    a, b = Config(), Config()
    assert a.digest() == b.digest()
    b.near_duplicates.threshold = 0.9
    assert a.digest() != b.digest()


@pytest.mark.parametrize("key, value, message", [
    ("detectors.outlier.enabled", "no", r"detectors\.outlier\.enabled must be true or false, got 'no'"),
    ("detectors.spectral.threshold_z", float("nan"), r"detectors\.spectral\.threshold_z must be a finite number"),
    ("detectors.outlier.threshold_z", -1.0, r"detectors\.outlier\.threshold_z must be in \(0, inf\), got -1"),
    ("detectors.outlier.n_estimators", 10**9, r"detectors\.outlier\.n_estimators must be in \[1, 10000\]"),
    ("detectors.outlier.pca_components", "many", r"detectors\.outlier\.pca_components must be a finite number"),
    ("detectors.trigger.alpha_test", 1.5, r"detectors\.trigger\.alpha_test must be in \(0, 1\)"),
    ("detectors.label_mismatch.class_weight", "heavy", r"detectors\.label_mismatch\.class_weight must be"),
    ("near_duplicates.threshold", float("inf"), r"near_duplicates\.threshold must be a finite number"),
    ("input.batch_size", 10**12, r"input\.batch_size must be in \[1, 1048576\]"),
    ("input.max_text_chars", -5, r"input\.max_text_chars must be in \[1, "),
    ("fit.reservoir_size", 10**12, r"fit\.reservoir_size must be in \[100, "),
    ("input.label_column", "", r"input\.label_column must name a column"),
    ("random_state", -3, r"random_state must be an integer >= 0"),
    ("input.id_column", {"a": 1}, r"input\.id_column must be a single value"),
    ("engine.kind", "spark", r"engine\.kind must be one of local, ray, got 'spark'"),
    ("engine.ray_cpus", 0, r"engine\.ray_cpus must be an integer >= 1, got 0"),
    ("engine.ray_cpus", "2", r"engine\.ray_cpus must be an integer >= 1, got '2'"),
    ("engine.ray_address", "", r"engine\.ray_address must be an address"),
])
def test_every_knob_is_checked_for_type_and_range_before_a_run(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {key: value})


def test_detector_knobs_from_a_file_are_typed_like_their_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text('detectors:\n  outlier:\n    enabled: "no"\n')
    with pytest.raises(ConfigError, match=r"c\.yaml: detectors\.outlier\.enabled must be true or false"):
        load_config(p)
    p.write_text("detectors:\n  spectral:\n    threshold_z: 3\n    min_group_size: 50\n")
    cfg = load_config(p)
    assert cfg.detectors["spectral"]["threshold_z"] == 3.0 and isinstance(cfg.detectors["spectral"]["threshold_z"], float)


def test_broken_yaml_is_one_line_naming_file_line_and_column(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("near_duplicates:\n  threshold: [0.5,\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert "\n" not in str(exc.value)
    assert str(exc.value).startswith(f"{p}: not valid YAML at line 3, column 1: ")


def test_the_engine_section_is_checked_as_a_whole_and_is_not_part_of_what_a_scan_finds(tmp_path):
    """Ray's knobs only with ``kind: ray``, a CPU count only for a new cluster; and the
    engine, unlike every other knob, leaves the scan's run key alone (the lists are the
    same on both engines, and either resumes the other's run)."""
    with pytest.raises(ConfigError, match=r"engine\.ray_address and engine\.ray_cpus .* go with engine\.kind: ray"):
        load_config(None, {"engine.ray_cpus": 2})
    with pytest.raises(ConfigError, match=r"engine\.ray_cpus \(--ray-cpus\) sizes a new local cluster"):
        load_config(None, {"engine.kind": "ray", "engine.ray_address": "auto", "engine.ray_cpus": 2})
    cfg = tmp_path / "ray.yaml"
    cfg.write_text("engine:\n  kind: ray\n  ray_address: local\n  ray_cpus: 2\n")
    engine = load_config(cfg).engine
    assert (engine.kind, engine.ray_address, engine.ray_cpus) == ("ray", "local", 2)
