"""Synthetic IM traffic: request logs and monitoring samples as an IM API gateway would send them.

Dozens of apps with Zipf-skewed volumes, the interface names of the IM REST API with their own
latency profiles (log-normal bodies, Pareto tails), IM error codes with exception causes, IPv4 and
IPv6 exit IPs (documentation ranges), and optional incidents (one app's error rate or latency jumps)
and malformed records. Deterministic for a seed, so tests and benchmarks reproduce.

Healthy apps meet the SLOs we ship (``alerts/slo.yaml``: 99.9% of requests succeed, 99% within 300 ms)
with room to spare, as production apps mostly do: 0.005-0.03% of their requests fail (5-30% of the
0.1% error budget) and ~0.4% are slower than 300 ms (~0.4x the latency budget). One app is noisy but
within budget (``NOISY_APP``: 0.06% failures, twice the slow tail). So only an ``Incident`` pages,
and a demo (``imtel embedded --incident-app ID``) pages for that app alone: see docs/runbook.md,
"Synthetic traffic and the alerts". ``Traffic.names`` are the apps' registry names (``produce``
publishes them with ``register_topic``); ``Traffic.simulate`` yields the counters the pipeline would
export for hours of this traffic in no time (a compressed clock), e.g. as Prometheus history.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from pipeline.config.kafka import produce_blocking

# (interface, share of traffic, median latency ms)
INTERFACES = [
    ("v4/openim/sendmsg", 0.30, 35), ("v4/openim/batchsendmsg", 0.06, 80),
    ("v4/group_open_http_svc/send_group_msg", 0.18, 45), ("v4/group_open_http_svc/get_group_info", 0.06, 20),
    ("v4/group_open_http_svc/add_group_member", 0.03, 60), ("v4/group_open_http_svc/create_group", 0.02, 90),
    ("v4/im_open_login_svc/account_import", 0.04, 25), ("v4/im_open_login_svc/multiaccount_import", 0.01, 120),
    ("v4/openim/query_online_status", 0.08, 15), ("v4/openim/admin_getroammsg", 0.05, 70),
    ("v4/sns/friend_add", 0.03, 40), ("v4/sns/friend_get", 0.05, 30),
    ("v4/profile/portrait_get", 0.06, 18), ("v4/openim/admin_msgwithdraw", 0.02, 50),
    ("v4/recentcontact/get_list", 0.01, 35),
]
# (error code, cause) from the IM API's error code table
ERRORS = [
    (70001, "UserSig expired"), (70003, "UserSig invalid"), (20003, "sender or recipient UserID invalid"),
    (20007, "recipient blocked the sender"), (10004, "invalid parameter"), (10002, "internal server error"),
    (90001, "JSON format error"), (10007, "operator has no permission"), (93000, "message too large"),
    (80001, "message content rejected by security review"), (70169, "server timeout, retry later"),
]
REGIONS = ["ap-singapore", "ap-guangzhou", "ap-shanghai", "ap-seoul", "eu-frankfurt", "na-ashburn", "ap-mumbai"]
PLATFORMS = ["iOS", "Android", "Web", "Windows", "macOS", "MiniProgram", "Flutter", "Server"]

# Baselines against the shipped SLOs (alerts/slo.yaml: availability 99.9%, latency 99% within 300 ms).
# Healthy apps fail 0.005-0.03% of their requests: 0.05-0.3x the availability budget, so neither the
# page (14.4x / 6x) nor the ticket (3x / 1x) fires for them. (Until 2026-12 it was 0.1-2%, i.e. up to
# 20x the budget: most apps paged in every demo.)
HEALTHY_ERROR_RATE = (0.00005, 0.0003)
# The noisy-but-within-budget app (index into Traffic.apps, the third busiest): 0.6x the availability
# budget and twice the slow tail (~0.6% slow: ~0.6x the latency budget). Close to its budget, never past it.
NOISY_APP, NOISY_ERROR_RATE, NOISY_TAIL = 2, 0.0006, 0.01
# Share of requests in the Pareto long tail (x5..): with the log-normal bodies ~0.4% of requests take
# more than 300 ms, ~0.4x the latency budget.
TAIL = 0.005
_FIRST = ("Acme", "Blue", "Coral", "Delta", "Echo", "Fable", "Granite", "Harbor", "Indigo", "Juniper")
_SECOND = ("Chat", "Social", "Games", "Meet", "Talk", "Live", "Shop", "Learn")


def app_name(index: int) -> str:
    """A made-up, unique name for the generator's ``index``-th app (its registry name)."""
    lap, k = divmod(index, len(_FIRST) * len(_SECOND))  # 80 pairs: (k % 10, (k + k // 10) % 8) are distinct
    first, second = _FIRST[k % len(_FIRST)], _SECOND[(k + k // len(_FIRST)) % len(_SECOND)]
    return f"{first} {second}" + (f" {lap + 1}" if lap else "")


@dataclass
class AppCounters:
    """Cumulative counters of one app: requests, failed ones, and requests at or below each latency edge."""

    requests: int
    failures: int
    le: list[int]

    def copy(self) -> AppCounters:
        return AppCounters(self.requests, self.failures, list(self.le))


@dataclass
class Incident:
    """One app whose error rate and latency jump (to test alerts and queries)."""

    sdk_app_id: int
    error_rate: float = 0.35
    latency_factor: float = 8.0


class Traffic:
    """Generates request-log dicts (and monitoring samples) with realistic shape."""

    def __init__(self, apps: int = 40, seed: int = 7, invalid_ratio: float = 0.0,
                 incident: Incident | None = None) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.apps = [1400000000 + i * 7919 + 1 for i in range(apps)]
        self.app_weights = [1.0 / (i + 1) ** 1.1 for i in range(apps)]
        self.app_error = {a: self.rng.uniform(*HEALTHY_ERROR_RATE) for a in self.apps}
        self.app_tail = dict.fromkeys(self.apps, TAIL)
        if apps > NOISY_APP:
            noisy = self.apps[NOISY_APP]
            self.app_error[noisy], self.app_tail[noisy] = NOISY_ERROR_RATE, NOISY_TAIL
        self.names = {a: app_name(i) for i, a in enumerate(self.apps)}
        self.iface_names = [i[0] for i in INTERFACES]
        self.iface_weights = [i[1] for i in INTERFACES]
        self.iface_median = {i[0]: i[2] for i in INTERFACES}
        self.invalid_ratio, self.incident = invalid_ratio, incident
        self.counter = 0

    def ip(self) -> str:
        r = self.rng
        if r.random() < 0.2:
            return f"2001:db8:{r.randrange(65536):x}:{r.randrange(65536):x}::{r.randrange(1, 65536):x}"
        return f"{r.choice((198, 203))}.{r.choice((51, 0))}.{r.randrange(256)}.{r.randrange(1, 255)}"

    def behaviour(self, app: int, incident: bool = True) -> tuple[float, float, float]:
        """(error rate, latency factor, tail share) of an app; ``incident``: as during the incident."""
        if incident and self.incident and app == self.incident.sdk_app_id:
            return self.incident.error_rate, self.incident.latency_factor, self.app_tail[app]
        return self.app_error[app], 1.0, self.app_tail[app]

    def _latency(self, r: random.Random, iface: str, factor: float, tail: float) -> int:
        latency = r.lognormvariate(0, 0.5) * self.iface_median[iface] * factor
        if r.random() < tail:
            latency *= r.paretovariate(1.5) * 5  # long tail
        return min(int(latency), 3_600_000)

    def request_log(self, now_ms: int) -> dict[str, Any]:
        r = self.rng
        app = r.choices(self.apps, self.app_weights)[0]
        iface = r.choices(self.iface_names, self.iface_weights)[0]
        err_rate, factor, tail = self.behaviour(app)
        latency = self._latency(r, iface, factor, tail)
        self.counter += 1
        rec: dict[str, Any] = {
            "sdk_app_id": app, "interface": iface, "request_time": now_ms - r.randrange(0, 2000),
            "client_ip": self.ip(), "latency_ms": latency, "error_code": 0,
            "region": r.choice(REGIONS), "platform": r.choice(PLATFORMS),
            "request_id": f"{app:x}-{now_ms:x}-{self.counter:x}-{r.randrange(1 << 24):06x}",
        }
        if r.random() < err_rate:
            code, cause = r.choice(ERRORS)
            rec["error_code"], rec["exception"] = code, cause
        return rec

    def monitoring_sample(self, now_ms: int) -> dict[str, Any]:
        r = self.rng
        app = r.choices(self.apps, self.app_weights)[0]
        iface = r.choices(self.iface_names, self.iface_weights)[0]
        requests = r.randrange(50, 5000)
        return {"sdk_app_id": app, "interface": iface, "window_start": now_ms - now_ms % 60000,
                "window_seconds": 60, "requests": requests,
                "failures": int(requests * self.app_error[app] * r.uniform(0.5, 1.5)),
                "latency_avg_ms": round(self.iface_median[iface] * r.uniform(0.8, 1.3), 2),
                "latency_max_ms": int(self.iface_median[iface] * r.uniform(5, 40)),
                "reporter": f"gw-{r.choice(REGIONS)}"}

    def latency_cdf(self, app: int, edges_s: Sequence[float], incident: bool = True,
                    draws: int = 20_000) -> list[float]:
        """P(latency <= edge) of an app's requests for each edge (seconds), by Monte Carlo over the same
        latency model as ``request_log`` (its own random stream: the traffic's is left alone)."""
        r = random.Random(f"{self.seed}-latency-{app}-{incident}")
        _, factor, tail = self.behaviour(app, incident)
        ifaces = r.choices(self.iface_names, self.iface_weights, k=draws)
        latencies = np.sort(np.array([self._latency(r, i, factor, tail) for i in ifaces], dtype=np.float64))
        return [float(np.searchsorted(latencies, e * 1000, side="right")) / draws for e in edges_s]

    def simulate(self, start_s: float, end_s: float, rate: float, step_s: float, edges_s: Sequence[float],
                 incident_from: float | None = None) -> Iterator[tuple[float, dict[int, AppCounters]]]:
        """The per-app counters the pipeline exports (requests, failures, latency buckets) for this
        traffic at ``rate`` records/s, every ``step_s`` from ``start_s`` to ``end_s``, all at once (a
        compressed clock): volumes, failures and latencies drawn per step (Poisson, binomial,
        multinomial) from each app's share, error rate and latency distribution. The incident, if
        any, is active from ``incident_from`` (epoch seconds; None: never). Counters start at 0."""
        rng = np.random.default_rng(self.seed)
        total_weight = sum(self.app_weights)
        shares = {a: w / total_weight for a, w in zip(self.apps, self.app_weights, strict=True)}

        def probabilities(app: int, incident: bool) -> np.ndarray:
            cdf = np.array([*self.latency_cdf(app, edges_s, incident), 1.0])
            return np.diff(cdf, prepend=0.0).clip(0.0)

        healthy = {a: probabilities(a, False) for a in self.apps}
        sick = {self.incident.sdk_app_id: probabilities(self.incident.sdk_app_id, True)} if self.incident else {}
        counters = {a: AppCounters(0, 0, [0] * len(edges_s)) for a in self.apps}
        t = start_s
        yield t, {a: c.copy() for a, c in counters.items()}
        while t < end_s:
            dt = min(step_s, end_s - t)
            t += dt
            for app in self.apps:
                during = incident_from is not None and app in sick and t - dt >= incident_from
                err, _, _ = self.behaviour(app, during)
                n = int(rng.poisson(rate * shares[app] * dt))
                c = counters[app]
                c.requests += n
                c.failures += int(rng.binomial(n, err))
                probs = (sick if during else healthy)[app]
                below = np.cumsum(rng.multinomial(n, probs / probs.sum()))[:-1]  # the last is > every edge
                c.le = [x + int(y) for x, y in zip(c.le, below, strict=True)]
            yield t, {a: c.copy() for a, c in counters.items()}

    def malformed(self, now_ms: int) -> bytes:
        """One invalid message of a random kind (bad JSON, wrong type, bad IP, missing field...)."""
        good = self.request_log(now_ms)
        kind = self.rng.randrange(6)
        if kind == 0:
            return msgspec.json.encode(good)[:-7]
        if kind == 1:
            good["latency_ms"] = "slow"
        elif kind == 2:
            good["client_ip"] = "999.1.2.3"
        elif kind == 3:
            del good["request_id"]
        elif kind == 4:
            good["request_time"] = now_ms - 30 * 86_400_000
        else:
            good["sdk_app_id"] = -5
        return msgspec.json.encode(good)

    def messages(self, now_ms: int, records: int, batch: int = 1) -> Iterator[tuple[bytes, bytes, bool]]:
        """(key, value, valid) messages carrying ``batch`` records each (JSON array when > 1)."""
        produced = 0
        while produced < records:
            n = min(batch, records - produced)
            produced += n
            if self.invalid_ratio and self.rng.random() < self.invalid_ratio:
                yield b"0", self.malformed(now_ms), False
                continue
            recs = [self.request_log(now_ms) for _ in range(n)]
            key = str(recs[0]["sdk_app_id"]).encode()
            yield key, msgspec.json.encode(recs if batch > 1 else recs[0]), True


def register(producer: Any, topic: str, traffic: Traffic, timeout: float = 15.0) -> int:
    """Publish every app of ``traffic`` with its name to the application registry topic, as
    ``imtel apps add`` does (one whole-state update per app, keyed by its id); returns how many Kafka
    acknowledged. A refusal (e.g. no write ACL on the topic) is reported, not raised: traffic without
    names is still traffic."""
    from pipeline.ops.registry import make_update

    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err.str())

    for app, name in traffic.names.items():
        update = make_update(sdk_app_id=app, name=name, status="active")
        produce_blocking(producer, topic, msgspec.json.encode(update), str(app).encode(), on_delivery=delivered)
    left = producer.flush(timeout)
    acked = len(traffic.names) - len(failed) - left
    if failed or left:
        print(f"[generate] warning: {len(traffic.names) - acked} app names not registered on {topic}: "
              f"{failed[0] if failed else 'not acknowledged in time'}", file=sys.stderr, flush=True)
    return acked


def produce(bootstrap: str, topic: str, samples_topic: str | None, rate: float, count: int | None,
            batch: int = 1, seed: int = 7, invalid_ratio: float = 0.0, incident: Incident | None = None,
            kafka_config: dict[str, str] | None = None, report: bool = False,
            register_topic: str | None = None) -> int:
    """Produce request logs at ``rate`` records/s (0 = as fast as possible) until ``count``;
    ``register_topic``: first publish the apps' names to this application registry topic."""
    from confluent_kafka import Producer

    producer = Producer({**(kafka_config or {}), "bootstrap.servers": bootstrap, "linger.ms": 20,
                         "batch.num.messages": 10000, "queue.buffering.max.messages": 200000})
    traffic = Traffic(seed=seed, invalid_ratio=invalid_ratio, incident=incident)
    if register_topic:
        register(producer, register_topic, traffic)
    sent, start, last_sample = 0, time.time(), 0.0
    tick = 0.1
    try:
        while count is None or sent < count:
            now = time.time()
            due = sent + 20000 if rate <= 0 else int((now - start) * rate) + 1
            due = min(due, count) if count is not None else due
            want = min(due - sent, 20000)
            if want > 0:
                for key, value, _ in traffic.messages(int(now * 1000), want, batch):
                    produce_blocking(producer, topic, value, key)
                sent += want
            if samples_topic and now - last_sample >= 5:
                last_sample = now
                for _ in range(20):
                    s = traffic.monitoring_sample(int(now * 1000))
                    produce_blocking(producer, samples_topic, msgspec.json.encode(s), str(s["sdk_app_id"]).encode())
            producer.poll(0)
            if rate > 0 and want <= 0:
                time.sleep(tick)
            if report and int(now) % 10 == 0 and want > 0:
                print(f"[generate] sent {sent:,}", flush=True)
    finally:
        producer.flush(30)
    return sent


