"""Run logging on rank 0: a CSV of every logged value, TensorBoard scalars, a Rich progress bar,
and plain lines on the ``kelm.train`` logger (step, loss, lr, tokens/s, ETA every ``log_every``
steps; metrics at each evaluation) that the CLI prints when stdout is not a terminal."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kelm.atomic import atomic_path, write_text_atomic
from kelm.progress import progress_bar

log = logging.getLogger("kelm.train")

METRICS_CSV = "metrics.csv"
RUN_JSON = "metrics.json"
CSV_HEADER = ("step", "split", "name", "value")


@dataclass(frozen=True)
class MetricRow:
    step: int
    split: str
    name: str
    value: float


def read_metrics(run_dir: Path, upto: int | None = None) -> list[MetricRow]:
    """The rows of ``run_dir``'s metrics CSV (those with ``step <= upto``, if given); [] without one."""
    path = Path(run_dir) / METRICS_CSV
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            try:
                row = MetricRow(int(rec["step"]), rec["split"], rec["name"], float(rec["value"]))
            except (KeyError, TypeError, ValueError):
                continue  # a line cut short by a crash
            if upto is None or row.step <= upto:
                rows.append(row)
    return rows


def require_tensorboard() -> None:
    """TensorBoard logging (``[train] tensorboard``, on by default) needs the tensorboard package."""
    from kelm.optional import check_installed

    check_installed("tensorboard", "TensorBoard logging", hint="or set [train] tensorboard = false")


def git_revision() -> str | None:
    """The source revision kelm runs from, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunLogger:
    """Appends ``step,split,name,value`` rows; mirrors them to TensorBoard; drives the progress bar."""

    def __init__(
        self,
        out_dir: Path,
        enabled: bool,
        tensorboard: bool,
        total_steps: int,
        start_step: int,
        history_from: Path | None = None,
    ):
        """``start_step > 0`` continues a run: rows up to that step are kept (copied from
        ``history_from``'s CSV when the run continues in another folder), later ones dropped."""
        self.out_dir, self.enabled = out_dir, enabled
        self.total_steps, self.start_step, self._t0 = total_steps, start_step, time.perf_counter()
        self._writer = None
        self._bar_cm = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / METRICS_CSV
        kept = read_metrics(history_from or out_dir, upto=start_step) if start_step else []
        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_HEADER)
            writer.writerows([r.step, r.split, r.name, f"{r.value:.9g}"] for r in kept)
        self._csv_file = path.open("a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_file)
        if tensorboard:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            # Events at or after purge_step left by an interrupted attempt are discarded.
            self._writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=start_step + 1)
        self._bar_cm = progress_bar(transient=False)
        self._bar = self._bar_cm.__enter__()
        self._task = self._bar.add_task("training", total=total_steps, completed=start_step, info="")

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self._csv.writerow([step, split, name, f"{value:.9g}"])
            if self._writer is not None:
                self._writer.add_scalar(f"{split}/{name}", value, step)
        self._csv_file.flush()
        if split != "train" and values:
            text = " ".join(f"{k} {v:.4f}" for k, v in values.items())
            log.info("step %d/%d %s %s", step, self.total_steps, split, text)

    def progress(self, step: int, info: dict[str, float]) -> None:
        if not self.enabled:
            return
        text = "  ".join(f"{k} {v:.4g}" for k, v in info.items())
        self._bar.update(self._task, completed=step, info=text)
        log.info(progress_line(step, self.total_steps, info, self._eta(step)))

    def _eta(self, step: int) -> float | None:
        """Seconds left at this run's pace so far."""
        done = step - self.start_step
        if done <= 0:
            return None
        return (time.perf_counter() - self._t0) / done * max(self.total_steps - step, 0)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar_cm is not None:
            self._bar_cm.__exit__(None, None, None)
        if self._writer is not None:
            self._writer.close()
        self._csv_file.close()


def progress_line(step: int, total: int, info: dict[str, float], eta: float | None) -> str:
    """``step 20/140 loss 0.6931 lr 4.5e-05 tokens/s 1,234 eta 0:01:23``."""
    parts = [f"step {step}/{total}"]
    for name, value in info.items():
        if name == "tok/s":
            parts.append(f"tokens/s {value:,.0f}")
        elif name == "lr":
            parts.append(f"lr {value:.3g}")
        else:
            parts.append(f"{name} {value:.4f}")
    if eta is not None:
        seconds = round(eta)
        parts.append(f"eta {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")
    return " ".join(parts)


def write_run_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    write_text_atomic(out_dir / RUN_JSON, json.dumps(summary, indent=2, default=str))


def timer() -> float:
    return time.perf_counter()
