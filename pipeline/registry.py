"""Application registry (Configuration Data): updates from the applications topic or the CLI.

An update is a JSON object ``{"sdk_app_id": 1400000001, "name": "...", "status": "active"|"terminated",
"created_at": epoch-ms?, "terminated_at": epoch-ms?, "retention_days": int?}``. The newest update per
app wins; a terminated app's row expires ``configuration_data`` days after termination (TTL).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

log = logging.getLogger(__name__)


class AppUpdate(msgspec.Struct, frozen=True):
    """One registry update."""

    sdk_app_id: Annotated[int, msgspec.Meta(ge=1, le=4_294_967_295)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    status: Annotated[str, msgspec.Meta(pattern="^(active|terminated)$")] = "active"
    created_at: int | None = None
    terminated_at: int | None = None
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=7)] | None = None


def _ts(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def row(update: AppUpdate, now: datetime | None = None) -> list[Any]:
    """The ``applications`` row of an update (termination time defaults to now)."""
    now = now or datetime.now(UTC)
    terminated = _ts(update.terminated_at) or (now if update.status == "terminated" else None)
    return [update.sdk_app_id, update.name, update.status, _ts(update.created_at) or now, terminated,
            update.retention_days, now]


COLUMNS = ["sdk_app_id", "name", "status", "created_at", "terminated_at", "retention_days", "updated_at"]


def apply_update(store: Any, value: bytes) -> bool:
    """Decode one update and upsert it; invalid updates are logged (by reason) and skipped."""
    try:
        update = msgspec.json.decode(value, type=AppUpdate)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        log.warning("invalid application registry update skipped: %s", str(exc)[:200])
        return False
    with store.lock:
        store.client.insert(f"{store.db}.applications", [row(update)], column_names=COLUMNS)
    return True
