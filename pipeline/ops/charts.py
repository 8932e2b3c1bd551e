"""Inline SVG charts for self-contained HTML reports: a time-series line chart and a horizontal bar chart.

Pure functions from numbers to SVG text: no script, no fonts, no network, so a report opens anywhere
(an air-gapped laptop, a ticket attachment, a print-out) and renders the same. Every text that comes
from data is escaped; every mark carries a ``<title>`` so hovering a point shows its value.

A line chart can mark *incomplete* spans (a time bucket the clock or the range cut, e.g. the current
minute): they are shaded and labelled, lines into their points are dashed and the points hollow, so a
partial bucket's lower count reads as "not over yet" rather than as a sudden drop.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

PALETTE = ("#2f6fdf", "#e8743b", "#c23b5a", "#19a979", "#945ecf", "#6c757d")
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
               172800, 604800)


@dataclass(frozen=True)
class Series:
    """One line: (epoch seconds, value or None for a gap) points."""

    name: str
    points: Sequence[tuple[float, float | None]]
    color: str


def nice_step(span: float, max_ticks: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving at most ``max_ticks`` ticks."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max_ticks
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if mult * power >= raw:
            return mult * power
    return 10 * power


def value_ticks(top: float, max_ticks: int = 5) -> list[float]:
    """Ticks from 0 to the first round value at or above ``top``."""
    step = nice_step(top if top > 0 else 1.0, max_ticks)
    count = max(1, math.ceil((top if top > 0 else 1.0) / step - 1e-9))
    return [i * step for i in range(count + 1)]


def time_ticks(start: float, end: float, max_ticks: int = 8) -> list[float]:
    """Tick times on round boundaries (whole seconds, minutes, hours, days in UTC)."""
    span = max(end - start, 1.0)
    step = next((s for s in _TIME_STEPS if span / s <= max_ticks), _TIME_STEPS[-1])
    first = math.ceil(start / step) * step
    return [float(t) for t in range(int(first), int(end) + 1, step)]


def time_label(t: float, span: float) -> str:
    moment = datetime.fromtimestamp(t, UTC)
    if span > 2 * 86400:
        return moment.strftime("%m-%d %H:%M")
    if span < 300:
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%H:%M")


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def line_chart(chart_id: str, label: str, series: Sequence[Series], x_start: float, x_end: float,
               fmt: Callable[[float], str], width: int = 900, height: int = 280,
               incomplete: Sequence[tuple[float, float]] = ()) -> str:
    """A time-series line chart; gaps (None) break the line, a lone point is drawn as a dot.

    ``incomplete``: [start, end) spans of buckets whose data is partial; points at times within them
    are drawn hollow, joined by dashed lines, over a shaded band labelled "incomplete"."""
    left, right, top, bottom = 72, 16, 34, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [y for s in series for _, y in s.points if y is not None and math.isfinite(y)]
    ticks = value_ticks(max(values, default=0.0))
    y_top = ticks[-1] or 1.0
    span = max(x_end - x_start, 1.0)

    def x(t: float) -> float:
        return left + (t - x_start) / span * plot_w

    def y(v: float) -> float:
        return top + plot_h - v / y_top * plot_h

    out = [f'<svg class="chart" data-chart="{escape(chart_id)}" role="img" aria-label="{escape(label)}" '
           f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'xmlns="http://www.w3.org/2000/svg" style="{FONT};font-size:11px">']
    for tv in ticks:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{_num(y(tv))}" y2="{_num(y(tv))}" stroke="#e3e6eb"/>')
        out.append(f'<text x="{left - 6}" y="{_num(y(tv) + 4)}" text-anchor="end" fill="#555">{escape(fmt(tv))}</text>')
    for tt in time_ticks(x_start, x_end):
        out.append(f'<line x1="{_num(x(tt))}" x2="{_num(x(tt))}" y1="{top + plot_h}" y2="{top + plot_h + 4}" '
                   'stroke="#888"/>')
        out.append(f'<text x="{_num(x(tt))}" y="{top + plot_h + 17}" text-anchor="middle" fill="#555">'
                   f'{escape(time_label(tt, span))}</text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#888"/>')
    for start, end in incomplete:
        a, b = max(start, x_start), min(end, x_end)  # the shaded part: inside the plot
        if b <= a:
            continue
        when = f"{datetime.fromtimestamp(start, UTC):%H:%M:%S}-{datetime.fromtimestamp(end, UTC):%H:%M:%S}"
        out.append(f'<rect class="incomplete" x="{_num(x(a))}" y="{top}" width="{_num(max(x(b) - x(a), 1.0))}" '
                   f'height="{plot_h}" fill="#eef0f3"><title>incomplete bucket {when} UTC: its data is partial'
                   '</title></rect>')
        if x(b) - x(a) >= 48:
            out.append(f'<text x="{_num((x(a) + x(b)) / 2)}" y="{top + 11}" text-anchor="middle" fill="#6c757d" '
                       'font-size="10">incomplete</text>')

    def partial(t: float) -> bool:
        return any(a <= t < b for a, b in incomplete)

    legend_x = left
    for s in series:
        out.append(f'<rect x="{legend_x}" y="8" width="12" height="12" rx="2" fill="{s.color}"/>'
                   f'<text x="{legend_x + 16}" y="18" fill="#222">{escape(s.name)}</text>')
        legend_x += 24 + 7 * len(s.name)
    if not values:
        out.append(f'<text class="no-data" x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" '
                   'fill="#888" font-size="14">no data in this range</text>')
    for s in series:
        segments: list[list[tuple[float, float]]] = [[]]
        for t, v in s.points:
            if v is None or not math.isfinite(v):
                segments.append([])
            else:
                segments[-1].append((t, v))
        for seg in filter(None, segments):
            if len(seg) == 1:
                continue
            # runs of complete points are solid; a step into or out of an incomplete point is dashed
            runs: list[tuple[bool, list[tuple[float, float]]]] = []
            for prev, cur in itertools.pairwise(seg):
                dashed = partial(prev[0]) or partial(cur[0])
                if runs and runs[-1][0] == dashed:
                    runs[-1][1].append(cur)
                else:
                    runs.append((dashed, [prev, cur]))
            for dashed, run in runs:
                d = " ".join(f"{'M' if i == 0 else 'L'}{_num(x(t))},{_num(y(v))}" for i, (t, v) in enumerate(run))
                out.append(f'<path class="{"series incomplete" if dashed else "series"}" '
                           f'data-series="{escape(s.name)}" d="{d}" fill="none" stroke="{s.color}" stroke-width="2" '
                           + ('stroke-dasharray="5 4" ' if dashed else "") + 'stroke-linejoin="round"/>')
        points = [(t, v) for seg in segments for t, v in seg]
        if len(points) <= 240 or any(partial(t) for t, _ in points):
            for t, v in points:
                if len(points) > 240 and not partial(t):
                    continue
                when = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")
                fill, note = ("#fff", " (incomplete bucket)") if partial(t) else (s.color, "")
                out.append(f'<circle cx="{_num(x(t))}" cy="{_num(y(v))}" r="2.5" fill="{fill}" stroke="{s.color}">'
                           f'<title>{escape(s.name)} {escape(when)} UTC: {escape(fmt(v))}{note}</title></circle>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(chart_id: str, label: str, items: Sequence[tuple[str, float]], fmt: Callable[[float], str],
              width: int = 900, color: str = PALETTE[2]) -> str:
    """Horizontal bars, largest first as given; long labels are cut (the full text is in the tooltip)."""
    label_w, bar_h, gap, top = 330, 20, 8, 8
    height = top * 2 + max(len(items), 1) * (bar_h + gap)
    peak = max((v for _, v in items), default=0.0) or 1.0
    room = width - label_w - 90
    out = [f'<svg class="chart" data-chart="{escape(chart_id)}" role="img" aria-label="{escape(label)}" '
           f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'xmlns="http://www.w3.org/2000/svg" style="{FONT};font-size:12px">']
    if not items:
        out.append(f'<text class="no-data" x="{width / 2}" y="{height / 2 + 4}" text-anchor="middle" fill="#888" '
                   'font-size="14">none in this range</text>')
    for i, (name, value) in enumerate(items):
        y0 = top + i * (bar_h + gap)
        short = name if len(name) <= 52 else name[:51] + "\u2026"
        w = max(value / peak * room, 1.0)
        out.append(f'<g><title>{escape(name)}: {escape(fmt(value))}</title>'
                   f'<text x="{label_w - 8}" y="{y0 + 14}" text-anchor="end" fill="#222">{escape(short)}</text>'
                   f'<rect class="bar" x="{label_w}" y="{y0}" width="{_num(w)}" height="{bar_h}" rx="3" '
                   f'fill="{color}"/>'
                   f'<text x="{_num(label_w + w + 6)}" y="{y0 + 14}" fill="#222">{escape(fmt(value))}</text></g>')
    out.append("</svg>")
    return "".join(out)
