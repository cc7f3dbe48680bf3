"""A figure of the eval history: one metric over steps, exports marked, kept ones highlighted."""

from __future__ import annotations

import math
from collections.abc import Iterable

from mlflow_best_export.ranking import Comparison, Ranking
from mlflow_best_export.records import EvalHistory


def history_figure(
    history: EvalHistory,
    metric: str,
    *,
    higher_is_better: bool = False,
    kept_steps: Iterable[int] = (),
    title: str | None = None,
):
    """A matplotlib Figure of ``metric`` over the global step.

    Every new best (what the exporter exports) is marked; the steps in
    ``kept_steps`` (the exports still kept) are highlighted.

    Raises:
      ValueError: if no record has ``metric``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    records = [r for r in history.records if metric in r.metrics]
    if not records:
        keys = sorted({k for r in history.records for k in r.metrics})
        raise ValueError(f"No eval record has the metric {metric!r}; the history has {keys}.")
    compare_fn = Comparison(metric, "max" if higher_is_better else "min")
    exported = Ranking.of(compare_fn).new_bests(records)
    kept = set(kept_steps)

    figure = Figure(figsize=(8, 4.5), dpi=100)
    axes = figure.add_subplot()
    steps = [r.step for r in records]
    values = [r.metrics[metric] for r in records]
    axes.plot(steps, values, "-o", color="#999999", markersize=3, label=f"eval {metric}")
    finite = [r for r in exported if math.isfinite(r.metrics[metric])]
    axes.scatter(
        [r.step for r in finite],
        [r.metrics[metric] for r in finite],
        marker="^",
        color="#1f77b4",
        zorder=3,
        label="exported (new best)",
    )
    kept_records = [r for r in records if r.step in kept]
    if kept_records:
        axes.scatter(
            [r.step for r in kept_records],
            [r.metrics[metric] for r in kept_records],
            s=160,
            facecolors="none",
            edgecolors="#d62728",
            linewidths=2,
            zorder=4,
            label="kept",
        )
    axes.set_xlabel("global step")
    axes.set_ylabel(metric)
    axes.set_title(title or f"{metric} ({'higher' if higher_is_better else 'lower'} is better)")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    return figure
