"""Synthetic IM traffic: request logs and monitoring samples as an IM API gateway would send them.

Dozens of apps with Zipf-skewed volumes, the interface names of the IM REST API with their own
latency profiles (log-normal bodies, Pareto tails), IM error codes with exception causes, IPv4 and
IPv6 exit IPs (documentation ranges), and optional incidents (one app's error rate or latency jumps)
and malformed records. Deterministic for a seed, so tests and benchmarks reproduce.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

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
        self.apps = [1400000000 + i * 7919 + 1 for i in range(apps)]
        self.app_weights = [1.0 / (i + 1) ** 1.1 for i in range(apps)]
        self.app_error = {a: self.rng.uniform(0.001, 0.02) for a in self.apps}
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

    def request_log(self, now_ms: int) -> dict[str, Any]:
        r = self.rng
        app = r.choices(self.apps, self.app_weights)[0]
        iface = r.choices(self.iface_names, self.iface_weights)[0]
        err_rate, factor = self.app_error[app], 1.0
        if self.incident and app == self.incident.sdk_app_id:
            err_rate, factor = self.incident.error_rate, self.incident.latency_factor
        latency = r.lognormvariate(0, 0.5) * self.iface_median[iface] * factor
        if r.random() < 0.01:
            latency *= r.paretovariate(1.5) * 5  # long tail
        self.counter += 1
        rec: dict[str, Any] = {
            "sdk_app_id": app, "interface": iface, "request_time": now_ms - r.randrange(0, 2000),
            "client_ip": self.ip(), "latency_ms": min(int(latency), 3_600_000), "error_code": 0,
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


def produce(bootstrap: str, topic: str, samples_topic: str | None, rate: float, count: int | None,
            batch: int = 1, seed: int = 7, invalid_ratio: float = 0.0, incident: Incident | None = None,
            kafka_config: dict[str, str] | None = None, report: bool = False) -> int:
    """Produce request logs at ``rate`` records/s (0 = as fast as possible) until ``count``."""
    from confluent_kafka import Producer

    producer = Producer({**(kafka_config or {}), "bootstrap.servers": bootstrap, "linger.ms": 20,
                         "batch.num.messages": 10000, "queue.buffering.max.messages": 200000})
    traffic = Traffic(seed=seed, invalid_ratio=invalid_ratio, incident=incident)
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


