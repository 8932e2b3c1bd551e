"""pipeline/monitoring/sli.py: per-chunk summaries merge to the summary of everything, merge is a commutative
monoid with ``{}`` as identity, the sums are right, the latency sketch's quantiles are within its
relative error, and the SLO buckets count what numpy counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.monitoring import sli as agg
from pipeline.sinks.writer import SLO_EDGES_MS

FAST = settings(max_examples=80, deadline=None)
MAX_MS = 3_600_000


@st.composite
def batches(draw: st.DrawFn, min_size: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(min_size, 200))
    apps = draw(hnp.arrays(np.int64, n, elements=st.integers(1, 6)))
    lat = draw(hnp.arrays(np.int64, n, elements=st.one_of(st.integers(0, 3000), st.integers(0, MAX_MS))))
    failed = draw(hnp.arrays(np.bool_, n))
    return apps, lat, failed


def _summ(b: tuple[np.ndarray, np.ndarray, np.ndarray]) -> agg.Summary:
    return agg.summarize(*b, SLO_EDGES_MS)


def _split(b: tuple[np.ndarray, np.ndarray, np.ndarray], cuts: list[int]) -> list[agg.Summary]:
    n = len(b[0])
    points = sorted({min(c, n) for c in cuts})
    return [agg.summarize(*(col[lo:hi] for col in b), SLO_EDGES_MS)
            for lo, hi in zip([0, *points], [*points, n], strict=True)]


@FAST
@given(batches(), st.lists(st.integers(0, 200), max_size=6))
def test_merged_chunks_equal_whole(b: tuple[np.ndarray, np.ndarray, np.ndarray], cuts: list[int]) -> None:
    whole = _summ(b)
    assert agg.merge_all(_split(b, cuts)) == whole
    assert set(whole) == {int(a) for a in b[0]}


@FAST
@given(batches(), batches(), batches())
def test_merge_commutative_associative_identity(x, y, z) -> None:
    a, b, c = _summ(x), _summ(y), _summ(z)
    assert agg.merge(a, b) == agg.merge(b, a)
    assert agg.merge(agg.merge(a, b), c) == agg.merge(a, agg.merge(b, c))
    assert agg.merge(a, {}) == a
    assert agg.merge({}, a) == a
    # merge does not mutate its inputs
    before = {k: (v.requests, v.sketch.copy()) for k, v in a.items()}
    agg.merge(a, a)
    assert all(a[k].requests == r and np.array_equal(a[k].sketch, s) for k, (r, s) in before.items())


def test_empty_is_neutral_for_app_summary() -> None:
    s = _summ((np.array([1, 1]), np.array([5, 700]), np.array([True, False])))[1]
    e = agg.empty(len(SLO_EDGES_MS))
    assert s.merge(e) == s
    assert e.merge(s) == s
    assert agg.summarize(np.array([], np.int64), np.array([], np.int64), np.array([], bool), SLO_EDGES_MS) == {}


@FAST
@given(batches())
def test_sums(b: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    apps, lat, failed = b
    out = _summ(b)
    for app, s in out.items():
        sel = apps == app
        assert s.requests == int(sel.sum())
        assert s.failures == int(failed[sel].sum())
        assert s.latency_sum_ms == int(lat[sel].sum())
        assert int(s.sketch.sum()) == s.requests
        assert int(s.slo_buckets.sum()) == s.requests
        expected_rate = (s.requests - s.failures) / s.requests
        assert s.success_rate == pytest.approx(expected_rate)


@FAST
@given(batches(min_size=1), st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]), st.floats(0, 1)))
def test_quantile_within_sketch_error(b: tuple[np.ndarray, np.ndarray, np.ndarray], q: float) -> None:
    apps, lat, _ = b
    for app, s in _summ(b).items():
        true_q = float(np.quantile(lat[apps == app], q, method="inverted_cdf"))
        u = s.quantile_ms(q)
        # The bucket of v has upper bound GAMMA**ceil(log_GAMMA v) (0 for v = 0), so for integer
        # latencies the bound is tight: true_q <= u <= true_q * GAMMA (checked exhaustively for 0..3.6e6
        # when this test was written; a tiny float slack only).
        assert true_q <= u <= true_q * agg.GAMMA * (1 + 1e-12) + 1e-12, (q, true_q, u)


def test_quantile_of_nothing_is_zero() -> None:
    assert agg.empty(3).quantile_ms(0.99) == 0.0


def test_sketch_upper_bound_covers_every_latency() -> None:
    v = np.arange(0, MAX_MS + 1, 997, dtype=np.int64)
    upper = np.array([agg.bucket_upper_ms(int(i)) for i in agg.sketch_index(v)])
    assert np.all(upper >= v)
    assert np.all(upper[1:] <= v[1:] * agg.GAMMA * (1 + 1e-12))
    assert int(agg.sketch_index(np.array([MAX_MS]))[0]) < agg.SKETCH_BUCKETS


@FAST
@given(batches(), st.lists(st.floats(0, MAX_MS, allow_nan=False), min_size=1, max_size=8, unique=True))
def test_slo_buckets_match_numpy_counts(b: tuple[np.ndarray, np.ndarray, np.ndarray], edges: list[float]) -> None:
    apps, lat, failed = b
    for edge_set in (tuple(sorted(edges)), SLO_EDGES_MS):
        out = agg.summarize(apps, lat, failed, edge_set)
        for app, s in out.items():
            mine = lat[apps == app]
            assert len(s.slo_buckets) == len(edge_set) + 1
            cumulative = np.cumsum(s.slo_buckets)
            for i, edge in enumerate(edge_set):
                assert cumulative[i] == int(np.count_nonzero(mine <= edge)), (edge, mine)
            assert cumulative[-1] == len(mine)


def test_slo_edge_is_inclusive() -> None:
    s = agg.summarize(np.array([1, 1, 1]), np.array([25, 26, 10_001]), np.array([False] * 3), (25.0, 10_000.0))[1]
    assert s.slo_buckets.tolist() == [1, 1, 1]


@pytest.mark.parametrize("dtype", [np.uint32, np.int64])
def test_lookup_tables_equal_the_formulas(dtype: type) -> None:
    """The per-row tables (latencies up to TABLE_MAX_MS) give what the log and the binary search give."""
    v = np.arange(0, agg.TABLE_MAX_MS + 1, dtype=dtype)
    assert np.array_equal(agg.sketch_index(v), agg._sketch_index(v))
    edges = (0.5, 1.0, 25.0, 99.9, 100.0, 2_500.0, 70_000.0)
    assert np.array_equal(agg.edge_index(v, edges), np.searchsorted(np.asarray(edges), v.astype(np.float64)))
    beyond = np.array([agg.TABLE_MAX_MS, agg.TABLE_MAX_MS + 1, MAX_MS], dtype=dtype)  # the exact path
    assert np.array_equal(agg.sketch_index(beyond), agg._sketch_index(beyond))


@given(hnp.arrays(st.sampled_from([np.uint32, np.int64]), st.integers(0, 300),
                  elements=st.integers(0, 2**32 - 1)))
def test_distinct_is_numpys_unique_with_inverse(values: np.ndarray) -> None:
    """``summarize`` finds the apps of a batch by hashing; it must give what ``np.unique`` gives."""
    distinct, inverse = agg._distinct(values)
    want, want_inverse = np.unique(values, return_inverse=True)
    assert np.array_equal(distinct, want) and np.array_equal(inverse, want_inverse.reshape(-1))
