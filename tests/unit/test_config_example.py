"""config.example.toml is a complete, valid config: every key, every default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_app.config import Config, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_example_loads_strictly_and_equals_the_defaults():
    assert load_config(EXAMPLE) == Config()


def test_example_lists_every_key():
    text = EXAMPLE.read_text()
    for section, model in Config():
        block = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
        for name, _ in model:
            assert re.search(rf"^#? ?{name} =", block, re.M), f"{section}.{name} missing from config.example.toml"


@pytest.mark.parametrize("body, key", [("[tally]\ntarget = 0\n", "tally.target"),
                                       ("[tracking]\nconfirm_hitz = 3\n", "tracking.confirm_hitz"),
                                       ("[nonsense]\nx = 1\n", "nonsense"),
                                       ("[inference]\nbackend = \"cuda\"\n", "inference.backend")])
def test_bad_keys_and_values_name_the_key(tmp_path, body, key):
    cfg = tmp_path / "c.toml"
    cfg.write_text(body)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(cfg)


def test_broken_toml_and_missing_file_are_clear(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[tally\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_broken_yaml_and_non_utf8_files_are_clear(tmp_path):
    pytest.importorskip("yaml")
    bad = tmp_path / "c.yaml"
    bad.write_text("tally: [target: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    latin = tmp_path / "l.toml"
    latin.write_bytes(b"[kiosk]\n# op\xe9rateur\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(latin)


def test_a_section_given_as_a_value_is_clear_with_an_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("tally = 5\n")
    with pytest.raises(ConfigError, match="'tally' must be a section"):
        load_config(cfg, {"tally.target": 3})
    with pytest.raises(ConfigError, match="tally"):
        load_config(cfg)  # without an override the validator names it
