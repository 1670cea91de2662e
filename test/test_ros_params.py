"""The node's one parameter table (safnet_ros/ros/params.py) and the files generated from it."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from safnet_ros.ros import params
from safnet_ros.ros.params import PARAMETERS, SPECS, ParameterError, check_value

REPO = Path(__file__).resolve().parents[1]
REGENERATE = "run `python -m safnet_ros.ros.params --write`"


def test_config_yaml_is_generated_from_the_table():
    text = (REPO / "config" / "segment.yaml").read_text()
    assert text == params.to_yaml(), f"config/segment.yaml drifted from ros/params.py: {REGENERATE}"
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert values == {spec.name: spec.default for spec in PARAMETERS}


def test_docs_table_is_generated_from_the_table():
    doc = (REPO / "docs" / "ros_node.md").read_text()
    assert params.doc_with_table(doc) == doc, f"the parameter table of docs/ros_node.md drifted: {REGENERATE}"
    for spec in PARAMETERS:
        assert f"| `{spec.name}` |" in doc


def test_every_default_passes_its_own_check_and_names_are_unique():
    assert len(SPECS) == len(PARAMETERS)
    for spec in PARAMETERS:
        assert check_value(spec, spec.default) == spec.default
        assert spec.description and "SPEC" not in spec.description


def test_precision_and_outside_views_are_declared():
    assert SPECS["precision"].default == "auto" and SPECS["precision"].choices == ("auto", "fp32", "bf16", "fp16")
    assert SPECS["outside_views"].default == "3d" and set(SPECS["outside_views"].choices) == {"ignore", "3d"}
    assert "debug" not in SPECS["gil_switch_interval"].description.lower()


@pytest.mark.parametrize("name, value, words", [
    ("chunk_size", 2, "is of type int; it must be a double (write 2.0, not 2)"),
    ("num_views", True, "is of type bool; it must be an integer"),
    ("num_views", 17, "is out of range: allowed 0..16"),
    ("map_voxel_size", 0.0, "is out of range: allowed (0, 10]"),
    ("sync_slop", float("nan"), "is out of range"),
    ("precision", "fp8", "is not allowed: one of auto | fp32 | bf16 | fp16"),
    ("fixed_frame", 3, "it must be a string"),
])
def test_bad_values_are_one_line_naming_the_parameter(name, value, words):
    with pytest.raises(ParameterError) as info:
        check_value(SPECS[name], value)
    text = str(info.value)
    assert text.startswith(f"parameter '{name}' = ") and words in text and "\n" not in text


def test_cli_prints_the_generated_files(capsys):
    assert params.main(["--yaml"]) == 0
    assert capsys.readouterr().out == params.to_yaml()
    assert params.main(["--markdown"]) == 0
    assert capsys.readouterr().out == params.to_markdown()
