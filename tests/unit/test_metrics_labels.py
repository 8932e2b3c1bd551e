"""The bounded ``app`` label (pipeline/monitoring/metrics.py ``AppLabeler``): sdk_app_id comes from untrusted
messages, so forged ids must not be able to take the labels of real apps, and the label set must stay
bounded however many ids arrive."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from pipeline.monitoring.metrics import (
    FRESHNESS_BUCKETS_S,
    LATENCY_BUCKETS_S,
    OTHER,
    AppLabeler,
    BatchHistogram,
    Metrics,
)
from pipeline.monitoring.sli import Summary, summarize


def batch(app: int) -> Summary:
    """One successful 20 ms request of ``app``."""
    return summarize(np.array([app]), np.array([20]), np.array([False]), tuple(e * 1000 for e in LATENCY_BUCKETS_S))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_forged_ids_cannot_evict_a_registered_app() -> None:
    labeler = AppLabeler(top_n=3, clock=Clock())
    labeler.register([1400000001])
    for forged in range(10_000):  # the forged ids come first, and each one in bulk
        labeler.label(forged + 1, requests=1_000_000)
    assert labeler.label(1400000001, requests=1) == "1400000001"
    for forged in range(10_000, 20_000):
        labeler.label(forged + 1, requests=1_000_000)
    assert labeler.label(1400000001) == "1400000001"


def test_busy_apps_win_the_slots_from_early_forged_ids() -> None:
    clock = Clock()
    labeler = AppLabeler(top_n=2, clock=clock)
    assert [labeler.label(i) for i in (7, 8, 9)] == ["7", "8", OTHER]  # first come while slots are free
    for _ in range(3):
        clock.now += 60
        assert labeler.label(1400000002, requests=500) in ("1400000002", OTHER)
    assert labeler.label(1400000002, requests=500) == "1400000002"
    assert labeler.label(1400000003, requests=5_000) == "1400000003"
    assert {labeler.label(7), labeler.label(8)} == {OTHER}
    assert sorted(labeler.evicted()) == ["7", "8"]


def test_old_traffic_decays() -> None:
    clock = Clock()
    labeler = AppLabeler(top_n=1, half_life_s=60, clock=clock)
    assert labeler.label(1, requests=1_000) == "1"
    clock.now += 600  # ten half-lives: app 1's thousand requests now weigh about one
    assert labeler.label(2, requests=10) == "2"


def test_unlabelled_scores_are_pruned() -> None:
    labeler = AppLabeler(top_n=2, clock=Clock())
    for forged in range(50_000):
        labeler.label(forged + 1)
    assert len(labeler._scores) <= 20 * 2 + 1000 + 1


def test_evicted_app_series_are_removed_so_labels_stay_bounded() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, top_apps=1)
    metrics.apps.register([1400000001])
    metrics.record_slis(batch(1))  # a forged id takes the free slot
    assert registry.get_sample_value("imtel_requests_total", {"app": "1", "outcome": "success"}) == 1
    metrics.record_slis(batch(1400000001))
    assert registry.get_sample_value("imtel_requests_total", {"app": "1", "outcome": "success"}) is None
    assert registry.get_sample_value("imtel_requests_total", {"app": "1400000001", "outcome": "success"}) == 1
    apps = {s.labels.get("app") for m in registry.collect() for s in m.samples if "app" in s.labels}
    assert apps == {"1400000001"}


@given(st.lists(st.one_of(st.floats(min_value=-1e9, max_value=1e9),
                          st.sampled_from([*FRESHNESS_BUCKETS_S, 0.0, -0.0, float("nan"), float("inf")])),
                max_size=200))
def test_batch_histogram_buckets_like_a_binary_search(values: list[float]) -> None:
    # a value counts in the first bucket whose edge it is at or below (exactly on an edge: that
    # bucket), NaN and values above the last edge in +Inf: what searchsorted(side="left") gives
    h = BatchHistogram("h_test", "test", [], FRESHNESS_BUCKETS_S, CollectorRegistry())
    v = np.asarray(values, dtype=np.float64)
    h.observe_many((), v)
    expected = np.bincount(np.searchsorted(np.asarray(FRESHNESS_BUCKETS_S), v, side="left"),
                           minlength=len(FRESHNESS_BUCKETS_S) + 1)
    assert h._series[()][0].tolist() == expected.tolist()
