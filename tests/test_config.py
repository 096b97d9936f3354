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
