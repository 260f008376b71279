"""Chaos results are collected per fault; `make chaos` writes them to docs/reliability.md."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

RESULTS: list[dict[str, Any]] = []
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def chaos_record():
    def record(**row: Any) -> None:
        RESULTS.append(row)
        print(f"\nchaos: {json.dumps(row)}")
    return record


def long_mode() -> bool:
    return os.environ.get("CHAT_CHAOS_LONG") == "1"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("CHAT_CHAOS_REPORT")
    if not out or not RESULTS:
        return
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    lines = [
        "# Reliability report",
        "",
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores ({cpu}), "
        f"{mem_gb:.0f} GiB RAM, Python {platform.python_version()}. Produced by `make chaos`.",
        "",
        "Each fault is injected under load (members on both gateway nodes, unique nonces, retries with the "
        "same nonce after `unavailable` or a lost ack, `sync` on `sync:required` or a hole), then healed. "
        "`lost` = acknowledged messages some member never received, live or by `sync`; `unexpected` = "
        "received messages nobody sent; `indeterminate` = sent, never acknowledged (every retry failed) "
        "yet committed; `crashes` = processes that died without being killed.",
        "",
    ]
    faults = [r for r in RESULTS if r.get("kind") == "fault"]
    if faults:
        lines += ["| fault | duration s | acked | delivered | lost | unexpected | indeterminate | duplicates | sync:required | crashes | recovery s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in faults:
            lines.append(f"| {r['fault']} | {r['duration_s']} | {r['acked']} | {r['delivered']} | {r['lost']} | "
                         f"{r['unexpected']} | {r.get('indeterminate', '—')} | {r['duplicates']} | {r['sync_required']} | "
                         f"{r['crashes']} | {r['recovery_s']} |")
        lines.append("")
    for r in RESULTS:
        if r.get("kind") == "baseline":
            lines += ["## The checker can fail", "",
                      f"The same driver and checker against plain python-socketio + `AsyncRedisManager` (no `sync`), "
                      f"Redis killed for {r['duration_s']} s: acked {r['acked']}, lost {r['lost']} "
                      f"({r['lost_pct']:.1f} % of member deliveries missing).", ""]
        if r.get("kind") == "fuzz":
            lines += ["## Wire fuzzing", "", f"{r['inputs']} inputs, {r['crashes']} crashes, details: {r.get('detail', '')}", ""]
        if r.get("kind") == "soak":
            lines += ["## Soak", "", f"{r['duration_s']} s of connect/disconnect churn and traffic; samples every "
                      f"{r['interval_s']} s of each gateway's RSS, open fds and asyncio tasks:", "",
                      "| process | RSS MiB first→last (after warm-up) | fds | tasks | verdict |", "|---|---|---|---|---|"]
            for p in r["processes"]:
                lines.append(f"| {p['name']} | {p['rss_mib'][0]:.1f} → {p['rss_mib'][1]:.1f} | {p['fds'][0]} → {p['fds'][1]} | "
                             f"{p['tasks'][0]} → {p['tasks'][1]} | {p['verdict']} |")
            lines.append("")
    (ROOT / out).write_text("\n".join(lines) + "\n")
