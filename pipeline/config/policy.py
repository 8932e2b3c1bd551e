"""The retention policy file (``schemas/retention.yaml``), loaded once and typed.

DDL TTLs, topic ``retention.ms`` and the audit all read their numbers from here, so the policy, the
database and the audit cannot disagree.

Two kinds of limits come out of it: the *policy limit* (how long a record may exist at most:
``topic_limit_ms``, ``table_days``) and the *setting* that keeps the worst case within that limit
(``topic_retention_ms``: Kafka deletes whole segments on a periodic check, so ``retention.ms`` must
leave room for ``segment.ms`` plus the check interval).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml


def _schemas_dir() -> Path:
    """Where ``schemas/`` is: inside the package when installed from a wheel (pyproject maps the
    repository's top-level ``schemas/`` to ``pipeline/schema/definitions``), else beside the package in a
    checkout or an editable install. The contracts stay in one top-level folder either way."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "schema" / "definitions"
    return packaged if (packaged / "retention.yaml").exists() else here.parent / "schemas"


SCHEMAS_DIR = _schemas_dir()
POLICY_FILE = SCHEMAS_DIR / "retention.yaml"
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Category:
    """One policy category (Log Data, Monitoring Data, Configuration Data)."""

    key: str
    policy_name: str
    retention_days: int
    tables: tuple[str, ...]
    topics: tuple[str, ...]


@dataclass(frozen=True)
class KafkaTiming:
    """How late Kafka may delete a record past ``retention.ms`` (segment roll + retention check)."""

    segment_ms: int = 3_600_000
    retention_check_ms: int = 300_000

    @property
    def headroom_ms(self) -> int:
        return self.segment_ms + self.retention_check_ms


@dataclass(frozen=True)
class Policy:
    """All categories plus the dead-letter rule, the Kafka timing and the pipeline's own records."""

    categories: dict[str, Category]
    dead_letters_carry: tuple[str, ...]
    kafka: KafkaTiming = KafkaTiming()
    records: dict[str, int] = field(default_factory=dict)  # table -> days (no personal data inside)
    per_app_caps: tuple[str, ...] = ()  # categories an app's own retention_days may shorten

    @property
    def log_data_days(self) -> int:
        return self.categories["log_data"].retention_days

    @property
    def monitoring_data_days(self) -> int:
        return self.categories["monitoring_data"].retention_days

    @property
    def configuration_data_days(self) -> int:
        return self.categories["configuration_data"].retention_days

    def table_days(self) -> dict[str, int]:
        """Retention in days for every table named by the policy."""
        return {t: c.retention_days for c in self.categories.values() for t in c.tables}

    def audited_table_days(self) -> dict[str, int]:
        """``table_days`` plus the pipeline's own records (``erasure_log``): every table with a TTL."""
        return {**self.table_days(), **self.records}

    def topic_limit_ms(self) -> dict[str, int]:
        """Policy limit per logical topic (request_logs, ..., dead_letters): no record may live longer.
        The dead-letter topic keeps raw bytes of any category it carries, so it gets the shortest."""
        out = {t: c.retention_days * DAY_MS for c in self.categories.values() for t in c.topics}
        out["dead_letters"] = min(self.categories[k].retention_days for k in self.dead_letters_carry) * DAY_MS
        return out

    def topic_retention_ms(self) -> dict[str, int]:
        """The largest ``retention.ms`` per logical topic whose worst case (``retention.ms`` +
        ``segment.ms`` + the broker's retention check) stays within ``topic_limit_ms``."""
        return {t: limit - self.kafka.headroom_ms for t, limit in self.topic_limit_ms().items()}

    def category_of_table(self, table: str) -> Category | None:
        return next((c for c in self.categories.values() if table in c.tables), None)

    def template_values(self) -> dict[str, int]:
        """Placeholders the DDL templates use (``{log_data_days}``, ..., ``{erasure_log_days}``)."""
        return {**{f"{key}_days": c.retention_days for key, c in self.categories.items()},
                **{f"{table}_days": days for table, days in self.records.items()}}


def load_policy(path: Path = POLICY_FILE) -> Policy:
    """Parse and sanity-check the policy file; a broken file is a one-line error."""
    try:
        doc = yaml.safe_load(path.read_text())
        cats = {}
        for key, body in doc["categories"].items():
            days = body.get("retention_days", body.get("retention_days_after_termination"))
            if not isinstance(days, int) or days <= 0:
                raise ValueError(f"category {key} needs a positive whole number of retention days")
            cats[key] = Category(key, body["policy_name"], days, tuple(body.get("tables", ())),
                                 tuple(body.get("topics", ())))
        carry = tuple(doc["dead_letters"]["carries"])
        kafka = KafkaTiming(**{k: _positive(f"kafka.{k}", v) for k, v in (doc.get("kafka") or {}).items()})
        records = {t: _positive(f"records.{t}.retention_days", body["retention_days"])
                   for t, body in (doc.get("records") or {}).items()}
        caps = tuple((doc.get("per_app_retention") or {}).get("caps", ()))
        unknown = [k for k in (*carry, *caps) if k not in cats]
        if unknown:
            raise ValueError(f"unknown category {unknown[0]!r}")
        limits = [cats[k].retention_days * DAY_MS for k in carry] + [
            c.retention_days * DAY_MS for c in cats.values() if c.topics]
        if limits and min(limits) <= kafka.headroom_ms:
            raise ValueError("kafka.segment_ms + kafka.retention_check_ms must be shorter than every topic's limit")
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"retention policy {path} is unusable: {exc}") from None
    return Policy(cats, carry, kafka, records, caps)


def _positive(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive whole number")
    return value
