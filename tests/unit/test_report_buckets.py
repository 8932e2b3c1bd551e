"""The report's charts mark the incomplete buckets instead of drawing them as a sudden drop.

``app_timeseries`` groups requests by ``toStartOfInterval(request_time, step)``: when a report is made
while the last step is still running (the clock, ``ReportData.generated``, is before that step's end),
its bucket holds only part of a step, and a requests-per-step line falls off a cliff at the right edge.
The clock is injected: the same data renders with the mark while the bucket fills and without it
once the step is over.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from pipeline.ops import charts, report

END = datetime.now(UTC).replace(second=0, microsecond=0)  # pure rendering: any whole minute does
START = END - timedelta(hours=1)
APP = 1400000001
STEP = 30


def rows_until(last: datetime, start: datetime = START, partial_requests: int = 90) -> list[dict[str, object]]:
    """300 requests per 30 s step from ``start``; the bucket at ``last`` holds only ``partial_requests``."""
    out, t = [], start - timedelta(seconds=start.timestamp() % STEP)
    while t <= last:
        n = partial_requests if t == last else 300
        out.append({"time": t.isoformat(), "requests": n, "failures": n // 100, "error_rate": 0.01,
                    "p50_ms": 35, "p95_ms": 90, "p99_ms": 150, "max_ms": 400})
        t += timedelta(seconds=STEP)
    return out


def data(clock: datetime, rows: list[dict[str, object]], start: datetime = START) -> report.ReportData:
    req = report.ReportRequest(APP, start, END)
    assert req.step_s == STEP
    return report.ReportData(req, clock, "Acme Chat", None, None, series=rows)


def chart(html: str, name: str) -> str:
    begin = html.index(f'data-chart="{name}"')
    return html[begin:html.index("</svg>", begin)]


def test_the_bucket_the_clock_is_in_is_incomplete() -> None:
    clock = END - timedelta(seconds=21)  # hh:59:39: the hh:59:30 bucket has run 9 of its 30 s
    last = END - timedelta(seconds=30)
    rows = rows_until(last)
    req = report.ReportRequest(APP, START, END)
    spans = report.incomplete_buckets(rows, req, STEP, clock)
    assert spans == [(last.timestamp(), END.timestamp())]
    # once the step is over (the clock past the end of the range), every bucket is whole
    whole = rows_until(last, partial_requests=300)
    assert report.incomplete_buckets(whole, req, STEP, END + timedelta(minutes=5)) == []
    # a range that does not start on a step boundary cuts its first bucket too
    late = START + timedelta(seconds=10)
    cut = report.incomplete_buckets(rows_until(last, start=late), report.ReportRequest(APP, late, END), STEP,
                                    END + timedelta(minutes=5))
    assert cut == [(START.timestamp(), START.timestamp() + STEP)]


def test_charts_mark_the_incomplete_last_bucket() -> None:
    clock = END - timedelta(seconds=21)
    last = END - timedelta(seconds=30)
    html = report.render(data(clock, rows_until(last)))
    for name in ("latency", "error-rate", "requests"):
        assert chart(html, name).count('class="incomplete"') == 1, name  # the band (too narrow for its label)
    # ratios: a solid line over the whole steps, a dashed step into the partial one, drawn hollow
    errors = chart(html, "error-rate")
    assert errors.count('class="series"') == 1 and errors.count('class="series incomplete"') == 1
    dashed = re.findall(r'class="series incomplete" data-series="error rate" d="([^"]+)"', errors)[0]
    assert len(dashed.split()) == 2 and 'stroke-dasharray="5 4"' in errors  # last whole bucket -> partial one
    hollow = re.findall(r'<circle [^>]*fill="#fff"[^>]*><title>([^<]+)</title>', errors)
    assert hollow == [f"error rate {last:%Y-%m-%d %H:%M:%S} UTC: 1% (incomplete bucket)"]
    # counts: the partial bucket (90 of ~300 requests so far) is left out, no cliff at the right edge
    volume = chart(html, "requests")
    assert "series incomplete" not in volume and ": 90" not in volume and 'fill="#fff"' not in volume
    assert f"{last - timedelta(seconds=30):%H:%M:%S} UTC: 300" in volume
    assert "incomplete steps shaded" in html
    # the same data, the step over: nothing marked (the low count is then a real drop)
    later = report.render(data(END + timedelta(seconds=5), rows_until(last)))
    assert 'class="incomplete"' not in later and "series incomplete" not in later and 'fill="#fff"' not in later
    assert "incomplete steps shaded" not in later and f"{last:%H:%M:%S} UTC: 90<" in later


def test_line_chart_incomplete_span_primitive() -> None:
    points = [(0.0, 1.0), (10.0, 2.0), (20.0, 3.0), (30.0, 0.5)]
    svg = charts.line_chart("x", "x", [charts.Series("a", points, "#000")], 0, 40, str, incomplete=[(30, 40)])
    assert svg.count('class="series"') == 1 and svg.count('class="series incomplete"') == 1
    assert 'class="incomplete" x=' in svg and ">incomplete</text>" in svg
    assert svg.count('fill="#fff"') == 1
    plain = charts.line_chart("x", "x", [charts.Series("a", points, "#000")], 0, 40, str)
    assert 'class="incomplete"' not in plain and plain.count('class="series"') == 1
