"""The live terminal line of the embedded run: throughput, per-app SLIs, dead letters."""

from __future__ import annotations

from typing import Any

from pipeline.monitoring import sli
from pipeline.monitoring.metrics import Metrics


def _total(metric: Any) -> float:
    return sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total"))


class LiveView:
    """Formats one progress line from counters and the processor's recent per-app summaries."""

    def __init__(self, metrics: Metrics, processor: Any, window: float = 30.0, top: int = 4) -> None:
        self.metrics, self.processor, self.window, self.top = metrics, processor, window, top
        self._last: tuple[float, float] | None = None

    def line(self, now: float) -> str:
        consumed = _total(self.metrics.records_consumed)
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = (consumed - self._last[1]) / (now - self._last[0])
        self._last = (now, consumed)
        written = _total(self.metrics.rows_written)
        dead = _total(self.metrics.records_invalid)
        recent = sli.merge_all(s for t, s in self.processor.recent if now - t <= self.window)
        apps = sorted(recent.items(), key=lambda kv: -kv[1].requests)[: self.top]
        per_app = "  ".join(f"{app}: {s.success_rate * 100:.2f}% p99 {s.quantile_ms(0.99):.0f}ms"
                            for app, s in apps)
        return (f"[imtel] {rate:,.0f} rec/s | consumed {consumed:,.0f} | rows {written:,.0f} | "
                f"dead letters {dead:,.0f} | {per_app}")
