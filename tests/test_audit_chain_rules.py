"""The audit chain's rule: an edited, a removed and an inserted row are each named; a clean chain verifies."""

from __future__ import annotations

from typing import Any

from alter_agents.vault.audit_chain import GENESIS, link, verify

KEY = b"k" * 32


def _chain(n: int) -> list[dict[str, Any]]:
    rows, previous = [], GENESIS
    for seq in range(1, n + 1):
        row: dict[str, Any] = {"id": seq, "seq": seq, "at": 1000.0 + seq, "action": "call", "principal": "user:a",
                               "grant_id": "g", "provider": "github", "method": "GET", "host": "api.github.com",
                               "path": f"/p/{seq}", "status": 200, "latency_ms": 1.5, "detail": None}
        row["prev_hash"], row["hash"] = previous, link(KEY, previous, row)
        previous = row["hash"]
        rows.append(row)
    return rows


def test_a_clean_chain_verifies_and_reports_its_head() -> None:
    rows = _chain(5)
    report = verify(KEY, rows)
    assert report.ok and report.checked == 5 and report.head == rows[-1]["hash"]


def test_an_edited_row_is_changed() -> None:
    rows = _chain(5)
    rows[2]["status"] = 500
    report = verify(KEY, rows)
    assert (report.problem, report.seq, report.checked) == ("changed", 3, 2)


def test_a_removed_row_is_named() -> None:
    rows = _chain(5)
    del rows[1]
    report = verify(KEY, rows)
    assert (report.problem, report.seq) == ("removed", 2)


def test_an_inserted_row_is_named() -> None:
    rows = _chain(5)
    forged = dict(rows[2], id=99, path="/forged")
    report = verify(KEY, [*rows, forged])
    assert (report.problem, report.seq) == ("inserted", 3)


def test_rehashing_without_the_key_does_not_help() -> None:
    rows = _chain(3)
    rows[1]["path"] = "/other"
    rows[1]["hash"] = link(b"x" * 32, rows[0]["hash"], rows[1])
    assert verify(KEY, rows).problem == "changed"


def test_pruned_rows_verify_from_their_anchor() -> None:
    rows = _chain(6)
    report = verify(KEY, rows[3:], anchor=rows[2]["hash"], anchor_seq=3)
    assert report.ok and report.checked == 3
    assert verify(KEY, rows[3:]).problem == "removed"
