"""The training config tree (engine/config_schema.py): keys, values, YAML safety, model ranges, view ranges."""
from __future__ import annotations

import time

import pytest

from safnet_ros.cli import main
from safnet_ros.engine import config_schema as cs
from safnet_ros.engine.train import DEFAULTS, load_config
from safnet_ros.errors import ConfigError

ROOT = {"data": {"root": "data/pre"}}


def _error_line(capsys) -> str:
    _out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _leaf_keys(tree: dict, path: str = "") -> list[str]:
    """Every dotted leaf key of a nested dict (an empty mapping such as model.overrides is a leaf)."""
    return [key for name, value in tree.items() for key in
            (_leaf_keys(value, f"{path}{name}.") if isinstance(value, dict) and value else [path + name])]


def test_every_key_has_a_rule_and_a_default():
    keys = _leaf_keys(cs.TrainConfig().to_dict())
    assert {"train.epochs", "train.amp", "chunks.views", "camera.depth_edge_holes", "model.overrides"} <= set(keys)
    flat = [f"{a}.{b}" if isinstance(v, dict) else a for a, v in DEFAULTS.items()
            for b in (v if isinstance(v, dict) and v else [None])]
    assert sorted(keys) == sorted(flat)  # DEFAULTS (a plain dict) is the same tree
    cfg = load_config(ROOT)
    assert cfg.train.amp == "bf16" and cfg.chunks.views == 3 and cfg.camera.prob == 0.5


def test_yaml_numbers_are_normalised():
    cfg = load_config({**ROOT, "train": {"lr": "1e-3", "epochs": 3.0}})
    assert cfg.train.lr == 0.001 and cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)


@pytest.mark.parametrize("section,key,value", [
    ("train", "lr", float("nan")), ("train", "momentum", float("inf")), ("train", "max_minutes", float("-inf")),
    ("chunks", "size", float("nan")), ("camera", "noise", float("nan")), ("images", "color_jitter", float("inf")),
])
def test_every_float_must_be_finite(section, key, value):
    with pytest.raises(ConfigError, match=rf"{section}\.{key} must be .*(finite|<=|>=)"):
        load_config({**ROOT, section: {key: value}})


@pytest.mark.parametrize("override,field", [
    ("resnet_width=1000000", "resnet_width"), ("a1=.nan", "a1"), ("radius=.inf", "radius"),
    ("k=100000000", "k"), ("head_mlp=[1000000]", "head_mlp"), ("pn_npoints=[100000000]", "pn_npoints"),
    ("num_classes=1e12", "num_classes"), ("feat_3d=1e30", "feat_3d"),
])
def test_model_overrides_are_range_checked_before_any_allocation(override, field):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"model\.overrides.*{field}"):
        load_config(ROOT, sets=[f"model.overrides.{override}"])
    assert time.perf_counter() - t0 < 2.0


def test_unknown_keys_name_their_path_and_the_known_ones():
    with pytest.raises(ConfigError, match=r"'camera\.blur'.*known keys under camera: .*motion_blur"):
        load_config({**ROOT, "camera": {"blur": 1}})
    with pytest.raises(ConfigError, match=r"'trian'.*known keys: .*train"):
        load_config({**ROOT, "trian": {}})
    with pytest.raises(ConfigError, match=r"train\.amp must be one of 'fp32', 'bf16', 'fp16'"):
        load_config({**ROOT, "train": {"amp": "fp8"}})


def test_views_range():
    cfg = load_config({**ROOT, "chunks": {"views": [0, 5]}})
    assert (cfg.chunks.min_views, cfg.chunks.views) == (0, 5)
    assert load_config({**ROOT, "chunks": {"views": 1, "min_views": 0}}).chunks.min_views == 0
    for bad, match in (([3, 1], "min <= max"), ([0, 6], "<= 5"), ([0, 1, 2], r"\[min, max\]"), ("x", "integer")):
        with pytest.raises(ConfigError, match=rf"chunks\.views.*{match}"):
            load_config({**ROOT, "chunks": {"views": bad}})
    with pytest.raises(ConfigError, match="min_views"):
        load_config({**ROOT, "chunks": {"views": [0, 5], "min_views": 2}})
    with pytest.raises(ConfigError, match="min_views must be <="):
        load_config({**ROOT, "chunks": {"views": 1, "min_views": 3}})


def test_yaml_alias_bomb_is_refused_fast_with_one_line(tmp_path, capsys):
    """The 485-byte 'billion laughs' of issue 29: one error line, at once, not 28 s and 1.6 GB of stderr."""
    lines = ['stage: 3d', 'data: {root: x}', 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("train: {epochs: *i}")
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert time.perf_counter() - t0 < 5.0
    line = _error_line(capsys)
    assert str(cfg) in line and "aliases" in line and len(line) < 300
    assert not (tmp_path / "run").exists()


def test_a_huge_config_file_is_refused(tmp_path, capsys):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("# " + "x" * (cs.MAX_CONFIG_BYTES + 10) + "\n")
    assert main(["train", str(cfg)]) == 2
    assert str(cfg) in _error_line(capsys)


def test_a_long_bad_value_is_shortened_in_the_error():
    with pytest.raises(ConfigError) as info:
        load_config({**ROOT, "train": {"epochs": list(range(100_000))}})
    assert "train.epochs" in str(info.value) and len(str(info.value)) < 300


def test_fp16_is_refused_on_the_cpu(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"stage: 2d\ndevice: cpu\ndata: {{root: {tmp_path}}}\ntrain: {{amp: fp16}}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "train.amp" in _error_line(capsys)
    assert not (tmp_path / "run").exists()
