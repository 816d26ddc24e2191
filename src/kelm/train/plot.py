"""Training curves of a run folder as one image: a panel per metric, a line per split, against step."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from kelm.atomic import atomic_path
from kelm.errors import DataError
from kelm.train.logging import METRICS_CSV, read_metrics

DEFAULT_NAME = "curves.png"
# Panels in this order first; any other metric follows in order of appearance.
_FIRST = ("loss", "perplexity", "lr")


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the curves of ``run_dir``'s ``metrics.csv`` to ``out`` (default ``RUN_DIR/curves.png``).

    The format follows ``out``'s suffix (PNG by default); rendering uses the Agg backend."""
    from kelm.optional import require

    require("matplotlib", "kelm plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    if not (run_dir / METRICS_CSV).is_file():
        raise DataError(f"no {METRICS_CSV} here; is it a kelm run folder?", run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise DataError("no metrics logged yet", run_dir / METRICS_CSV)
    series: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        series[row.name][row.split].append((row.step, row.value))
    names = [n for n in _FIRST if n in series] + [n for n in series if n not in _FIRST]

    cols = 1 if len(names) == 1 else 2
    nrows = -(-len(names) // cols)
    fig = Figure(figsize=(5.5 * cols, 3.4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        for split, points in sorted(series[name].items()):
            points.sort()
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=split, marker="o" if len(points) <= 30 else None, markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(run_dir.resolve().name)

    target = Path(out) if out is not None else run_dir / DEFAULT_NAME
    fmt = target.suffix.lstrip(".").lower() or "png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=fmt, dpi=110)
    return target
