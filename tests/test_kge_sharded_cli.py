"""`kelm kge train --shard-entities --nproc 2`: a sharded entity table trained from the CLI on two
gloo processes. Its DCP checkpoints hold each row once, resume exactly at two processes and
reshard to one; the exported model holds the whole table and loads with `load_kge`; a table that
cannot fit in memory is refused in one line before it is allocated.

The bundled UMLS (135 entities: 68 and 67 rows per rank), ComplEx dim 8, 8 steps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tomli_w
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from test_train_resume import kelm_subprocess

from kelm.kge.folder import load_kge

STEPS = 8


def _config(folder: Path) -> Path:
    cfg = {
        "task": {
            "name": "link-prediction",
            "dataset": "umls",
            "model": "complex",
            "dim": 8,
            "training": "negative-sampling",
            "num_negatives": 16,
            "shard_entities": True,
        },
        "train": {
            "strategy": "ddp",
            "threads": 1,
            "batch_size": 64,
            "lr": 0.05,
            "max_steps": STEPS,
            "checkpoint_every": 4,
            "keep_checkpoints": 3,
            "tensorboard": False,
        },
    }
    path = folder / "sharded.toml"
    path.write_text(tomli_w.dumps(cfg), encoding="utf-8")
    return path


def kge(*args: str) -> subprocess.CompletedProcess[str]:
    return kelm_subprocess("kge", "train", *args, env={"OMP_NUM_THREADS": "1"}, timeout=300)


def train(*args: str) -> None:
    proc = kge(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sharded")
    cfg = str(_config(folder))
    out = {name: folder / name for name in ("straight", "resumed", "resharded")}
    train(cfg, "--out", str(out["straight"]), "--nproc", "2")
    train(cfg, "--out", str(out["resumed"]), "--nproc", "2", "--max-steps", "4")
    train(cfg, "--out", str(out["resharded"]), "--resume", str(out["resumed"] / "checkpoints" / "step_00000004"))
    train(cfg, "--out", str(out["resumed"]), "--nproc", "2", "--resume", str(out["resumed"]))
    return out


def test_checkpoint_holds_each_row_once(runs: dict[str, Path]) -> None:
    meta = dcp.FileSystemReader(str(runs["straight"] / "checkpoints" / "step_00000004")).read_metadata()
    for key in ("model.kge.entity.weight", "optim.state.kge.entity.weight.exp_avg"):
        table = meta.state_dict_metadata[key]
        assert list(table.size) == [135, 8], key
        assert sorted((c.offsets[0], c.sizes[0]) for c in table.chunks) == [(0, 68), (68, 67)], key


def test_resume_is_exact_and_reshards_to_one_process(runs: dict[str, Path]) -> None:
    straight, resumed, resharded = (weights(runs[k]) for k in ("straight", "resumed", "resharded"))
    assert straight.keys() == resumed.keys() == resharded.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
        assert (straight[key] - resharded[key]).abs().max() < 1e-5, key


def test_exported_model_holds_the_whole_table(runs: dict[str, Path]) -> None:
    model, spec = load_kge(runs["straight"])
    assert spec["num_entities"] == 135
    assert tuple(model.kge.entity.weight.shape) == (135, 8)
    assert torch.equal(model.kge.entity.weight, weights(runs["straight"])["kge.entity.weight"])
    with torch.no_grad():
        assert model("score_t", torch.tensor([0]), torch.tensor([1])).shape == (1, 135)


def test_a_table_too_large_for_memory_is_refused(tmp_path: Path) -> None:
    proc = kge(
        "--dataset", "umls", "--dim", "1000000000", "--training", "negative-sampling", "--shard-entities",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    assert len(lines) == 1 and "the embedding tables do not fit: 135 entities x dim 1000000000" in lines[0]
