"""``safnet eval --precision``: passed to the Segmenter; fp16 without CUDA is one clear error."""
from __future__ import annotations

from pathlib import Path

import pytest

from safnet_ros.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from safnet_ros.model.config import SafnetConfig
    from safnet_ros.model.safnet import build_model, save_checkpoint

    torch.manual_seed(0)
    config = SafnetConfig.preset("lite", pn_npoints=(64, 32, 16, 8), k=8)
    path = tmp_path_factory.mktemp("m") / "lite.pt"
    save_checkpoint(path, build_model(config).eval(), config)
    return path


def test_fp16_on_the_cpu_is_one_clear_error(checkpoint, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    code = main(["eval", "--model", str(checkpoint), "--data", str(tmp_path / "data"), "--device", "cpu",
                 "--precision", "fp16", "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "fp16" in err and "CUDA" in err and "Traceback" not in err


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_precision_reaches_the_segmenter(checkpoint, tmp_path, monkeypatch, precision):
    from safnet_ros.engine import evaluate as ev
    from safnet_ros.errors import MissingDataError

    built = []
    real = ev.load_segmenter
    monkeypatch.setattr(ev, "load_segmenter", lambda *a, **kw: built.append(real(*a, **kw)) or built[-1])
    (tmp_path / "data").mkdir()
    with pytest.raises(MissingDataError):  # no scenes here: the segmenters are built first
        main_args = ["eval", "--model", str(checkpoint), "--data", str(tmp_path / "data"), "--device", "cpu",
                     "--precision", precision, "--no-progress", "--out", str(tmp_path / "o")]
        ev.run(_parse(main_args))
    assert [s.precision for s in built] == [precision]


def _parse(argv: list[str]):
    import argparse

    from safnet_ros.engine.evaluate import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser.add_subparsers(dest="cmd").add_parser("eval"))
    return parser.parse_args(argv)
