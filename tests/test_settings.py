from pathlib import Path

import pytest
import yaml

from duplidog import settings
from duplidog.core.layout import shot_output_pattern
from duplidog.errors import DuplidogError

ROOT = Path(__file__).resolve().parents[1]


def test_config_yaml_equals_the_schema_defaults():
    with open(ROOT / "config/config.yaml", encoding="utf-8") as f:
        assert yaml.safe_load(f) == settings.defaults(), "regenerate with: duplidog config > config/config.yaml"


def test_config_describe_puts_each_description_over_its_setting_and_still_loads(capsys):
    from duplidog.cli import main

    assert main(["config", "--describe"]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text) == settings.defaults()
    lines = text.splitlines()
    at = lines.index("  start_over: false")
    assert lines[at - 1].startswith("  # ") and "Train from scratch when the keyframes change" in "\n".join(lines[at - 4:at])
    assert "One of: auto, 1, 2, 4, 8." in text  # infer.ensemble's choices


def test_version(capsys):
    from duplidog import __version__
    from duplidog.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"duplidog {__version__}"


def test_every_schema_key_has_type_description_and_default():
    def walk(node, path):
        for key, child in node.get("properties", {}).items():
            where = f"{path}.{key}".lstrip(".")
            assert "type" in child, where
            assert child.get("description"), where
            assert "default" in child, where
            walk(child, where)

    walk(settings.schema(), "")


def test_shot_contract_keys_resolve_and_fill_defaults():
    config = settings.resolve({"shot": "sh010", "source": "p.%04d.exr", "target": "f.%04d.exr",
                               "output": "o.%04d.exr", "train": {"steps": 10, "max_minutes": 0.5}})
    assert config["train"]["steps"] == 10 and config["train"]["max_minutes"] == 0.5
    assert config["infer"]["chunk_size"] == settings.defaults()["infer"]["chunk_size"]


def test_wrong_type_names_the_key():
    with pytest.raises(DuplidogError, match=r"train\.steps"):
        settings.resolve({"train": {"steps": "many"}})
    with pytest.raises(DuplidogError, match="colorspace"):
        settings.resolve({"colorspace": "sRGB-ish"})
    with pytest.raises(DuplidogError, match="Additional properties"):
        settings.resolve({"trian": {}})


def test_empty_or_unreadable_shot_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(DuplidogError, match="empty.yaml: the shot file is empty"):
        settings.load_shot_file(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("shot: [unclosed\n")
    with pytest.raises(DuplidogError, match=r"broken.yaml: not valid YAML at line 2, column 1: "):
        settings.load_shot_file(broken)
    with pytest.raises(DuplidogError, match="nope.yaml: shot file not found"):
        settings.load_shot_file(tmp_path / "nope.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(DuplidogError, match="scalar.yaml: a shot file must be a YAML mapping"):
        settings.load_shot_file(scalar)


def test_default_output_follows_the_contract():
    config = settings.resolve({"shot": "sh010", "source": "plates/p.%04d.dpx", "target": "f.%04d.dpx"})
    assert shot_output_pattern(config) == "results/sh010/output/sh010.%04d.dpx"


def test_a_command_lines_set_reads_an_exponent_without_a_dot_as_a_number():
    from duplidog.cli import _apply_sets

    assert _apply_sets({}, ["train.lr=2e-3", "train.min_lr=1.0e-7", "shot=1e3x", "train.steps=null"]) == {
        "train": {"lr": 0.002, "min_lr": 1e-7, "steps": None}, "shot": "1e3x"}


@pytest.mark.parametrize("section, typo", [("infer", "chunksize"), ("model", "presett"), ("assemble", "contact_frame"),
                                           ("train", "max_minute"), ("pool", "tilesize")])
def test_a_typo_inside_any_section_is_refused_naming_it(section, typo):
    from duplidog.settings import resolve

    with pytest.raises(DuplidogError, match=rf"shot.yaml: {section}: .*'{typo}' was unexpected"):
        resolve({section: {typo: 1}}, origin="shot.yaml")


def test_a_batch_setting_reaches_a_shot_that_sets_other_keys_of_its_section():
    from duplidog.settings import merge_settings, resolve

    batch = {"train": {"max_minutes": 30}, "infer": {"chunk_size": 4}}
    shot = {"train": {"steps": 500}, "shot": "sh010"}
    merged = resolve(merge_settings(batch, shot), origin="sh010.yaml")
    assert merged["train"]["max_minutes"] == 30 and merged["train"]["steps"] == 500
    assert merged["infer"]["chunk_size"] == 4 and batch == {"train": {"max_minutes": 30}, "infer": {"chunk_size": 4}}
    common = (Path(__file__).parents[1] / "rules/common.smk").read_text()
    assert "resolve(merge_settings(shared, user)" in common  # the workflow's batch uses this merge
