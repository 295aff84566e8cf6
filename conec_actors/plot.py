"""``conec-actors bench NAME --plot FILE.png``: the ratios a benchmark prints
(conec-actors' figure over its baseline's, one JSON object per line) drawn
as bars, with a line at 1.0 and each line's target when it carries one.

`ratios` reads one benchmark line into `Ratio`s (pure, tested on real
lines); `draw` needs matplotlib (the ``plot`` extra) and writes a PNG with
the Agg backend.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PlotUnavailable", "Ratio", "draw", "json_lines", "ratios", "require_matplotlib"]

#: The ratio a line's generic ``target_ratio`` is about: the first of these it has.
_HEADLINE = ("ratio_msgs_per_s", "ratio_deliveries_per_s", "ratio_p50")

#: Words in a ratio's key that make it a cost (lower is better).
_COSTS = ("p50", "p99", "cpu", "latency", "_us")

#: Ratios whose key does not say what they compare: key -> (metric, higher is
#: better, baseline). bench.groups compares a group with one peer.
_NAMED = {
    "tell_group_ratio": ("tell_group msgs/s", True, "tell to one peer"),
    "ask_group_ratio": ("ask_group p50", False, "ask to one peer"),
}

#: The baseline of lines that do not name it (``baseline_impl``) by benchmark.
_BASELINES = {"proxied": "naive relay", "proxied-ping": "naive relay",
              "direct": "plain aioquic", "direct-ping": "plain aioquic",
              "broadcast": "aioquic fan-out"}

#: Fields that tell a benchmark's lines apart, in label order.
_LABEL_FIELDS = ("path", "members", "size")

_TARGET = re.compile(r"^\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+)")


class PlotUnavailable(Exception):
    """matplotlib is not installed."""


@dataclass(frozen=True)
class Ratio:
    """One bar: conec-actors' figure over the baseline's."""

    #: Which measurement: the benchmark and what tells its lines apart.
    label: str
    #: What was compared (``"msgs/s"``, ``"p50"``, ...).
    metric: str
    #: What conec-actors was compared with.
    baseline: str
    value: float
    #: The DESIGN target the line gives for it, if any.
    target: float | None
    higher_is_better: bool

    @property
    def meets(self) -> bool | None:
        """Whether `value` meets `target` (None without a target)."""
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


def json_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The JSON objects among `lines` (a benchmark's stdout); other lines
    are skipped."""
    out = []
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
    return out


def _parse_target(text: Any) -> tuple[float, bool] | None:
    """``">= 0.9"`` -> ``(0.9, True)`` (higher is better); None if `text`
    states no number (``"none (context ...)"``)."""
    if not isinstance(text, str):
        return None
    m = _TARGET.match(text)
    if m is None:
        return None
    return float(m.group(2)), m.group(1).startswith(">")


def _metric(key: str) -> str:
    """``ratio_msgs_per_s`` -> ``msgs/s``; ``tell_group_ratio`` -> ``tell_group``."""
    name = key.removeprefix("ratio_").removesuffix("_ratio")
    return name.replace("_per_s", "/s").replace("_per_", "/")


def _label(line: Mapping[str, Any]) -> str:
    parts = [str(line.get("bench", "?"))]
    for key in _LABEL_FIELDS:
        value = line.get(key)
        if value is None or isinstance(value, dict | list):
            continue
        if key == "size":
            parts.append(f"{value} B")
        elif key == "members":
            parts.append(f"{value} members")
        else:
            parts.append(str(value))
    return " ".join(parts)


def _ratio_keys(line: Mapping[str, Any]) -> list[str]:
    keys = [k for k, v in line.items()
            if (k.startswith("ratio_") or k.endswith("_ratio"))
            and isinstance(v, int | float) and not isinstance(v, bool)
            # Ratios to something other than the baseline are context.
            and "_to_" not in k]
    # Same messages, same payload: the MB/s ratio repeats the msgs/s one.
    if "ratio_msgs_per_s" in keys and "ratio_mb_per_s" in keys:
        keys.remove("ratio_mb_per_s")
    return keys


def ratios(line: Mapping[str, Any]) -> list[Ratio]:
    """The ratios one benchmark line reports, each with the target the
    line gives for it: ``target_<key>`` (``target_ratio_p50``), else the
    line's ``target_ratio`` for its headline ratio. Per-round lines
    (``bench`` ending in ``-round``) give none: their summary line follows."""
    if str(line.get("bench", "")).endswith("-round"):
        return []
    keys = _ratio_keys(line)
    headline = next((k for k in _HEADLINE if k in keys), None)
    bench = str(line.get("bench", ""))
    impl = line.get("baseline_impl")
    baseline = impl if isinstance(impl, str) else _BASELINES.get(bench, "baseline")
    out = []
    for key in keys:
        metric, higher, against = _NAMED.get(
            key, (_metric(key), not any(w in key for w in _COSTS), baseline))
        target = _parse_target(line.get(f"target_{key}"))
        if target is None and key == headline:
            target = _parse_target(line.get("target_ratio"))
        if target is not None:
            higher = target[1]
        out.append(Ratio(_label(line), metric, against, float(line[key]),
                         None if target is None else target[0], higher))
    return out


def require_matplotlib() -> None:
    """Raise `PlotUnavailable` (naming the extra) unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install "
                              "'conec-actors[plot]'") from None


def draw(bars: Sequence[Ratio], title: str, path: str | Path) -> None:
    """Draw `bars` into the PNG file `path`: throughputs (higher is better)
    and costs (lower is better) in two panels, a line at 1.0, a dashed mark
    at each bar's target, green when met, red when missed, grey without a
    target. Raises `PlotUnavailable` or ValueError (no bars)."""
    if not bars:
        raise ValueError("nothing to plot: the benchmark printed no ratio")
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(title_, [b for b in bars if b.higher_is_better is higher])
              for title_, higher in (("throughput: conec-actors / baseline (higher is better)",
                                      True),
                                     ("latency and cost: conec-actors / baseline "
                                      "(lower is better)", False))]
    panels = [(t, bs) for t, bs in panels if bs]
    width = max(8.0, 1.1 * max(len(bs) for _, bs in panels) + 2.0)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 4.2 * len(panels)),
                             squeeze=False)
    colour = {True: "#2e7d32", False: "#c62828", None: "#757575"}
    for ax, (panel_title, bs) in zip(axes[:, 0], panels, strict=True):
        xs = range(len(bs))
        ax.bar(xs, [b.value for b in bs], color=[colour[b.meets] for b in bs], width=0.6)
        ax.axhline(1.0, color="black", linewidth=1.0)
        for x, b in zip(xs, bs, strict=True):
            ax.annotate(f"{b.value:.2f}x", (x, b.value), ha="center", va="bottom",
                        xytext=(0, 2), textcoords="offset points", fontsize=8)
            if b.target is not None:
                ax.hlines(b.target, x - 0.42, x + 0.42, colors="#1565c0",
                          linestyles="dashed", linewidth=1.5)
        ax.set_xticks(list(xs), [f"{b.label}\n{b.metric} vs {b.baseline}" for b in bs],
                      fontsize=8,
                      rotation=30 if len(bs) > 4 else 0, ha="right" if len(bs) > 4 else "center")
        ax.set_ylabel("ratio")
        ax.set_ylim(0, max(max(b.value for b in bs), *(b.target or 0 for b in bs), 1.0) * 1.18)
        ax.set_title(panel_title, fontsize=10)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig.legend(handles=[
        Line2D([], [], color="black", linewidth=1.0, label="1.0: as fast as the baseline"),
        Line2D([], [], color="#1565c0", linestyle="dashed", label="DESIGN target"),
        Patch(color=colour[True], label="meets it"), Patch(color=colour[False], label="misses it"),
        Patch(color=colour[None], label="no target"),
    ], loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
