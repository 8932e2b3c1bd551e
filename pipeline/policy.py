"""The retention policy file (``schemas/retention.yaml``), loaded once and typed.

DDL TTLs, topic ``retention.ms`` and the audit all read their numbers from here, so the policy, the
database and the audit cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
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
class Policy:
    """All categories plus the dead-letter rule."""

    categories: dict[str, Category]
    dead_letters_carry: tuple[str, ...]

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

    def topic_retention_ms(self) -> dict[str, int]:
        """Maximal ``retention.ms`` per logical topic (request_logs, ..., dead_letters)."""
        out = {t: c.retention_days * DAY_MS for c in self.categories.values() for t in c.topics}
        out["dead_letters"] = min(self.categories[k].retention_days for k in self.dead_letters_carry) * DAY_MS
        return out

    def template_values(self) -> dict[str, int]:
        """Placeholders the DDL templates use."""
        return {f"{key}_days": c.retention_days for key, c in self.categories.items()}


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
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"retention policy {path} is unusable: {exc}") from None
    return Policy(cats, carry)
