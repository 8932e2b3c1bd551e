"""The retention table (docs/privacy-and-retention.md), the policy file (schemas/retention.yaml) and the
DDL agree: every category's limit, tables, TTL clauses (as rendered from the templates) and topic
settings, the dead-letter topic and the pipeline's own records; nothing the policy names is missing from
the table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.config.policy import DAY_MS, load_policy
from pipeline.config.settings import Settings
from pipeline.schema.migrations import desired_ttls
from pipeline.schema.topics import topic_specs

PAGE = Path(__file__).resolve().parents[2] / "docs" / "privacy-and-retention.md"
POLICY = load_policy()
TTLS = desired_ttls("imtel")
SPECS = {s.logical: s for s in topic_specs(Settings(), POLICY)}


def table_rows() -> dict[str, list[str]]:
    """First cell -> cells of the markdown table under '## Retention'."""
    text = PAGE.read_text()
    section = text[text.index("\n## Retention\n"):]
    section = section[: section.index("\n## ", 1)]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    assert rows[0] == ["policy", "limit", "tables", "TTL", "topic: retention.ms + segment.ms"]
    return {r[0]: r for r in rows[1:]}


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def topic_cell(logical: str) -> str:
    spec = SPECS[logical]
    extra = f" ({spec.config['cleanup.policy']})" if spec.config["cleanup.policy"] != "delete" else ""
    return f"`{spec.name}`{extra}: {spec.config['retention.ms']} + {spec.config['segment.ms']}"


@pytest.mark.parametrize("key", sorted(POLICY.categories))
def test_each_category_row_matches_policy_and_ddl(key: str) -> None:
    category = POLICY.categories[key]
    row = table_rows()[category.policy_name]
    after = " after termination" if key == "configuration_data" else ""
    assert row[1] == f"{category.retention_days} days{after}"
    assert ticked(row[2]) == list(category.tables)
    assert [t.strip(" `") for t in row[3].split(";")] == [TTLS[t] for t in category.tables]
    assert row[4] == "; ".join(topic_cell(t) for t in category.topics)


def test_dead_letter_row_is_the_shortest_category_it_carries() -> None:
    (row,) = [r for name, r in table_rows().items() if name.startswith("Dead letters")]
    days = POLICY.topic_limit_ms()["dead_letters"] // DAY_MS
    assert days == min(POLICY.categories[k].retention_days for k in POLICY.dead_letters_carry)
    assert row[1] == f"{days} days"
    assert row[4] == topic_cell("dead_letters")


def test_records_rows_match_policy_and_ddl() -> None:
    for table, days in POLICY.records.items():
        (row,) = [r for r in table_rows().values() if ticked(r[2]) == [table]]
        assert row[1] == f"{days} days"
        assert ticked(row[3]) == [TTLS[table]]


def test_every_table_and_topic_is_in_the_table() -> None:
    rows = table_rows().values()
    assert sorted(t for r in rows for t in ticked(r[2])) == sorted(POLICY.audited_table_days())
    assert sorted(TTLS) == sorted(POLICY.audited_table_days())
    named = {ticked(r[4])[0] for r in rows if ticked(r[4])}
    assert named == {s.name for s in SPECS.values()}


def test_topic_headroom_in_the_prose_matches_the_policy() -> None:
    text = PAGE.read_text()
    assert POLICY.kafka.segment_ms == 3_600_000 and POLICY.kafka.retention_check_ms == 300_000
    assert "`retention.ms` = limit - 1 h - 5 min" in text
