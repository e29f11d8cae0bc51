"""``--plot``: one PNG chart per scenario, its side-by-side figures as bars (matplotlib, the ``plot`` extra).

Each figure of a scenario (a table column) gets its own panel, since their units differ; the bars are
the contenders' medians, with whiskers from the fastest to the slowest repetition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bench._common import ScenarioResult, summarize

__all__ = ["write_charts"]

_COLORS = ("#3656d6", "#e07b39", "#2f9e6e", "#b24c8f", "#7a7f8c", "#c9a227")


def _tag(label: str, index: int) -> str:
    """A contender's short name: its ``(a)`` prefix when it has one."""
    if label.startswith("(") and ")" in label[:5]:
        return label[: label.index(")") + 1]
    return label if len(label) <= 14 else f"({chr(ord('a') + index)})"


def _number(value: float, fmt: str) -> str:
    return f"{value:,.0f}" if abs(value) >= 10_000 else format(value, fmt)


def write_charts(results: Sequence[ScenarioResult], folder: Path) -> list[Path]:
    """Write ``<scenario>.png`` into ``folder`` for every scenario that ran; return the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for result in results:
        if result.skipped or not result.labels:
            continue
        columns = [c for c in result.columns if any(result.runs.get(k, {}).get(c.key) for k in result.labels)]
        if not columns:
            continue
        keys = list(result.labels)
        tags = [_tag(result.labels[k], i) for i, k in enumerate(keys)]
        colors = [_COLORS[i % len(_COLORS)] for i in range(len(keys))]
        per_row = min(3, len(columns))
        rows = math.ceil(len(columns) / per_row)
        legend_height = 0.22 * len(keys) + 0.2
        size = (4.2 * per_row, (0.32 * len(keys) + 1.1) * rows + legend_height)
        fig, axes = plt.subplots(rows, per_row, figsize=size, squeeze=False)
        for ax, column in zip(axes.flat, columns, strict=False):
            medians, lows, highs = [], [], []
            for key in keys:
                stats = summarize(result.runs.get(key, {}).get(column.key, []))
                median = stats["median"]
                ok = isinstance(median, float | int) and not math.isnan(median)
                medians.append(median if ok else 0.0)
                lows.append(max(0.0, median - stats["min"]) if ok else 0.0)
                highs.append(max(0.0, stats["max"] - median) if ok else 0.0)
            positions = list(range(len(keys)))
            ax.barh(positions, medians, xerr=[lows, highs], color=colors,
                    error_kw={"elinewidth": 1, "capsize": 3, "ecolor": "#333"})
            ax.set_yticks(positions, tags, fontsize=8)
            ax.invert_yaxis()
            ax.set_title(column.header, fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(axis="x", alpha=0.3)
            tops = [m + hi for m, hi in zip(medians, highs, strict=True) if m > 0]
            bottoms = [m - lo if m - lo > 0 else m for m, lo in zip(medians, lows, strict=True) if m > 0]
            if tops and max(tops) / min(bottoms) > 50:
                ax.set_xscale("log")  # values orders of magnitude apart: all bars stay visible
                ax.set_xlim(min(bottoms) / 3, max(tops) * 6)
            elif tops:
                ax.set_xlim(0, max(tops) * 1.3)
            for pos, value, high in zip(positions, medians, highs, strict=True):
                ax.annotate(_number(value, column.fmt), (value + high, pos), xytext=(5, 0), textcoords="offset points",
                            va="center", fontsize=7)
        for ax in list(axes.flat)[len(columns):]:
            ax.axis("off")
        handles = [Rectangle((0, 0), 1, 1, color=c) for c in colors]
        fig.legend(handles, [result.labels[k] for k in keys], loc="lower center", ncol=1, fontsize=8, frameon=False)
        fig.suptitle(result.title, fontsize=11, fontweight="bold")
        fig.tight_layout(rect=(0, legend_height / size[1], 1, 1))
        path = folder / f"{result.name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
