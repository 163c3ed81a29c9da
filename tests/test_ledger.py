"""The healing ledger: file format, rotation, crash safety, restarts, windows, the InfluxDB sink.

Crash safety is tested twice: with torn lines written by hand (every shape a crash can leave),
and with a real writer process killed by SIGKILL while it appends in a loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlwarden.middleware.influx import InfluxSettings
from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config import LedgerConfig, SidecarConfig
from mlwarden.sidecar.healing.ledger import MAX_QUERY_LIMIT, Ledger
from mlwarden.sidecar.healing.ledger_influx import InfluxLedgerSink, record_line
from mlwarden.sidecar.healing.ledger_records import LedgerRecord
from mlwarden.sidecar.listeners import Listener
from tests.doubles import FakeClock
from tests.servers import LOOPBACK, VictoriaMetrics, free_port

LOGGER = "mlwarden.sidecar.ledger"
T0 = 1_700_000_000.0


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


# -- records ---------------------------------------------------------------------------------


def test_record_json_round_trip_keeps_every_field() -> None:
    rec = LedgerRecord(
        id="abc-000001",
        at=T0 + 0.25,
        action="rollback",
        target="canary",
        reason="error rate 12% > 5%",
        signals={"error_rate": 0.12, "open": True, "v": "v2", "none": None, "n": 3},
        outcome="ok",
        policy="canary-errors",
        severity="critical",
        actor="admin",
        details={"from_weight": 10, "to_weight": 0, "nested": {"a": [1, 2]}},
    )
    again = LedgerRecord.from_json(rec.to_json())
    assert again == rec
    d = json.loads(rec.to_json())
    assert list(d) == [
        "id",
        "time",
        "at",
        "action",
        "target",
        "outcome",
        "severity",
        "policy",
        "actor",
        "reason",
        "signals",
        "details",
    ]
    assert d["time"] == "2023-11-14T22:13:20.250000Z"
    assert d["at"] == T0 + 0.25


def test_record_time_alone_is_enough_to_read_it_back() -> None:
    rec = LedgerRecord.from_json(
        '{"time": "2023-11-14T22:13:20.250000Z", "action": "fallback",'
        ' "target": "primary", "future_key": 1}'
    )
    assert rec.at == T0 + 0.25
    assert rec.outcome == "ok" and rec.actor == "auto"


def test_record_rejects_actions_that_are_not_bounded_words() -> None:
    for action in ("Rollback", "roll back", "", "x" * 41, "drop;table", None):
        with pytest.raises(ValueError, match="action"):
            LedgerRecord(action=action, target="v1")  # type: ignore[arg-type]
    assert LedgerRecord(action="some_new_action", target="v1").action == "some_new_action"
    with pytest.raises(ValueError, match="severity"):
        LedgerRecord(action="rollback", target="v1", severity="panic")
    with pytest.raises(ValueError, match="outcome"):
        LedgerRecord(action="rollback", target="v1", outcome="OK!")


def test_record_sizes_are_bounded() -> None:
    rec = LedgerRecord(
        action="policy_fired",
        target="t" * 500,
        reason="r" * 5000,
        signals={f"s{i}": i for i in range(100)} | {"ignored": 1},
        details={"blob": ["x" * 150] * 100},
    )
    assert len(rec.reason) == 1000 and rec.reason.endswith("…")
    assert len(rec.target) == 200
    assert len(rec.signals) == 32 and list(rec.signals)[:2] == ["s0", "s1"]
    assert dict(rec.details) == {"truncated": True, "size_bytes": pytest.approx(15_000, rel=0.1)}

    long_values = LedgerRecord(
        action="policy_fired",
        target="t",
        signals={"n" * 100: "v" * 1000},
        details={"k": "v" * 1000, "deep": [[[[[[[[[[1]]]]]]]]]]},
    )
    ((name, value),) = long_values.signals.items()
    assert len(name) == 64 and len(value) == 200
    assert len(long_values.details["k"]) == 200
    assert len(long_values.to_json()) < 4096


def test_record_signals_are_strict_json_scalars() -> None:
    rec = LedgerRecord(
        action="rollback",
        target="v2",
        signals={
            "nan": float("nan"),
            "inf": math.inf,
            "ninf": -math.inf,
            "np": np.float32(0.5),
            "npint": np.int64(7),
            "obj": object(),
        },
    )
    assert rec.signals["nan"] == "nan" and rec.signals["inf"] == "inf"
    assert rec.signals["ninf"] == "-inf"
    assert rec.signals["np"] == 0.5 and rec.signals["npint"] == 7.0
    assert isinstance(rec.signals["obj"], str)
    json.loads(rec.to_json(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def test_record_is_read_only() -> None:
    rec = LedgerRecord(action="rollback", target="v2", signals={"a": 1})
    with pytest.raises(AttributeError):
        rec.action = "promotion"  # type: ignore[misc]
    with pytest.raises(TypeError):
        rec.signals["a"] = 2  # type: ignore[index]


# -- appending and reading -------------------------------------------------------------------


def test_append_writes_one_line_and_reads_back_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    clock = FakeClock(T0)
    with Ledger(path, clock=clock) as ledger:
        rec = ledger.append(
            "breaker_opened",
            "primary",
            reason="5 consecutive 5xx",
            signals={"consecutive_5xx": 5},
            severity="warning",
        )
    assert rec.at == T0 and rec.id.endswith("-000001")
    assert lines_of(path) == [rec.to_json()]
    with Ledger(path, clock=clock) as again:
        assert again.query() == [rec]
        assert again.stats()["loaded"] == 1


def test_memory_only_ledger_keeps_records_without_a_file(tmp_path: Path) -> None:
    with Ledger(None, clock=FakeClock(T0)) as ledger:
        a = ledger.append("fallback", "primary")
        b = ledger.append("restore_primary", "primary")
        assert ledger.query() == [b, a]
        assert ledger.stats()["path"] is None
    assert list(tmp_path.iterdir()) == []


def test_from_config_shapes_the_file_as_the_ledger_block_says(tmp_path: Path) -> None:
    block = LedgerConfig(path=str(tmp_path / "l.jsonl"), max_bytes=4096, backups=1, fsync=False)
    with Ledger.from_config(block, clock=FakeClock(T0)) as ledger:
        for _ in range(60):
            ledger.append("webhook", "ops", reason="x" * 100)
        assert ledger.flush(timeout=10)
        assert ledger.stats()["rotations"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.jsonl", "l.jsonl.1"]


def test_ids_are_unique_across_restarts_and_ordered_within_a_run(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with Ledger(path, fsync=False) as first:
        ids1 = [first.append("webhook", "ops").id for _ in range(3)]
    with Ledger(path, fsync=False) as second:
        ids2 = [second.append("webhook", "ops").id for _ in range(3)]
    assert ids1 == sorted(ids1) and ids2 == sorted(ids2)
    assert len(set(ids1 + ids2)) == 6
    assert ids1[0].split("-")[0] != ids2[0].split("-")[0]


def test_query_is_newest_first_and_filters_by_every_field() -> None:
    clock = FakeClock(T0)
    ledger = Ledger(None, clock=clock)
    recs = []
    for i, (action, target, policy, severity) in enumerate(
        [
            ("breaker_opened", "primary", None, "warning"),
            ("fallback", "primary", "errors", "info"),
            ("rollback", "canary", "canary-errors", "critical"),
            ("breaker_closed", "primary", None, None),
            ("rollback", "canary", "canary-latency", "critical"),
        ]
    ):
        clock.now = T0 + i
        recs.append(ledger.append(action, target, policy=policy, severity=severity))
    assert ledger.query() == recs[::-1]
    assert ledger.query(action="rollback") == [recs[4], recs[2]]
    assert ledger.query(target="primary", limit=2) == [recs[3], recs[1]]
    assert ledger.query(policy="canary-errors") == [recs[2]]
    assert ledger.query(severity="critical", action="rollback", policy="canary-latency") == [
        recs[4]
    ]
    assert ledger.query(since=T0 + 1, until=T0 + 3) == [recs[2], recs[1]]
    assert ledger.query(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        ledger.query(limit=-1)


def test_query_limit_is_capped() -> None:
    ledger = Ledger(None, recent=5000)
    for _ in range(MAX_QUERY_LIMIT + 10):
        ledger.append("set_weight", "canary")
    assert len(ledger.query(limit=10**9)) == MAX_QUERY_LIMIT


def test_settings_are_validated_all_at_once() -> None:
    with pytest.raises(ValueError) as err:
        Ledger(None, max_bytes=0, backups=-1, recent=-5, index_horizon_s=math.nan)
    for name in ("max_bytes", "backups", "recent", "index_horizon_s"):
        assert name in str(err.value)


def test_closed_ledger_refuses_appends(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.jsonl")
    ledger.close()
    ledger.close()
    with pytest.raises(RuntimeError, match="closed"):
        ledger.append("rollback", "v2")


def test_failed_write_neither_raises_nor_leaves_a_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, fsync=False)
    ledger.append("fallback", "primary")
    assert ledger.flush(timeout=10)
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])  # half a line reaches the file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with caplog.at_level(logging.ERROR, LOGGER):
        rec = ledger.append("rollback", "canary")
        assert ledger.flush(timeout=10)  # the writer thread meets the full disk
    monkeypatch.undo()
    assert "No space left" in caplog.text
    assert ledger.stats()["write_errors"] == 1
    assert ledger.query(limit=1) == [rec]  # still in memory for /-/events
    after = ledger.append("promotion", "canary")
    ledger.close()
    assert [LedgerRecord.from_json(line).action for line in lines_of(path)] == [
        "fallback",
        "promotion",
    ]
    assert after.action == "promotion"


# -- listeners and counts --------------------------------------------------------------------


def test_listeners_get_each_record_and_cannot_break_an_append(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = Ledger(None)
    seen: list[LedgerRecord] = []

    class Broken(Listener):
        def recorded(self, record: LedgerRecord) -> None:
            raise RuntimeError("listener bug")

    class Seen(Listener):
        def recorded(self, record: LedgerRecord) -> None:
            seen.append(record)

    ledger.add_listener(Broken())
    ledger.add_listener(listener := Seen())
    with caplog.at_level(logging.ERROR, LOGGER):
        rec = ledger.append("escalation", "ops", outcome="failed")
    assert seen == [rec]
    assert "listener bug" in caplog.text
    assert ledger.stats()["listener_errors"] == 1
    ledger.remove_listener(listener)
    ledger.append("escalation", "ops")
    assert seen == [rec]
    assert ledger.counts() == {("escalation", "failed"): 1, ("escalation", "ok"): 1}


# -- rotation --------------------------------------------------------------------------------


def test_rotation_keeps_backups_files_and_bounds_their_size(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    max_bytes, backups = 2000, 3
    longest = 0
    with Ledger(path, max_bytes=max_bytes, backups=backups, fsync=False, recent=10_000) as ledger:
        for i in range(200):
            rec = ledger.append(
                "set_weight", "canary", reason="x" * (i % 37), signals={"weight": i}
            )
            longest = max(longest, len(rec.to_json()) + 1)
        assert ledger.flush(timeout=10)
        assert ledger.stats()["rotations"] > backups
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ledger.jsonl", "ledger.jsonl.1", "ledger.jsonl.2", "ledger.jsonl.3"]
    weights: list[int] = []
    for name in reversed(names):  # oldest first: .3 .2 .1 then the current file
        f = tmp_path / name
        assert f.stat().st_size <= max_bytes
        assert f.read_bytes().endswith(b"\n")
        weights += [LedgerRecord.from_json(line).signals["weight"] for line in lines_of(f)]
    assert weights == list(range(weights[0], 200))  # contiguous, newest kept
    assert weights[0] > 0  # the oldest were rotated away
    assert longest < max_bytes


def test_a_record_larger_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with Ledger(path, max_bytes=300, backups=2, fsync=False) as ledger:
        ledger.append("fallback", "primary")
        big = ledger.append("rollback", "canary", reason="r" * 900)
        ledger.append("fallback", "primary")
    assert lines_of(tmp_path / "ledger.jsonl.1") == [big.to_json()]
    assert len(lines_of(path)) == 1


def test_rotation_without_backups_starts_a_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with Ledger(path, max_bytes=500, backups=0, fsync=False) as ledger:
        for _ in range(20):
            ledger.append("fallback", "primary")
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.jsonl"]
    assert path.stat().st_size <= 500


# -- crash safety ----------------------------------------------------------------------------


def test_a_torn_last_line_is_cut_off_when_the_ledger_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ledger.jsonl"
    with Ledger(path) as ledger:
        whole = [ledger.append("fallback", "primary"), ledger.append("rollback", "canary")]
    torn = ledger_line("promotion")[:37]
    with path.open("ab") as f:
        f.write(torn.encode())
    with caplog.at_level(logging.WARNING, LOGGER), Ledger(path) as reopened:
        assert "torn line" in caplog.text
        assert reopened.stats()["torn_repairs"] == 1
        assert reopened.stats()["torn_bytes"] == len(torn)
        assert reopened.query() == whole[::-1]
        after = reopened.append("webhook", "ops")
    assert [LedgerRecord.from_json(line) for line in lines_of(path)] == [*whole, after]


def test_a_file_that_is_only_a_torn_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b'{"id":"x","ti')
    with Ledger(path) as ledger:
        assert ledger.query() == []
        ledger.append("fallback", "primary")
    assert len(lines_of(path)) == 1


def test_a_whole_record_missing_only_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    line = ledger_line("rollback")
    path.write_text(line)
    with Ledger(path) as ledger:
        assert [r.action for r in ledger.query()] == ["rollback"]
        ledger.append("promotion", "canary")
    assert [LedgerRecord.from_json(x).action for x in lines_of(path)] == ["rollback", "promotion"]


def test_readers_skip_and_count_lines_that_are_not_records(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(
        "\n".join(
            [
                ledger_line("fallback"),
                "garbage",
                '{"action": "rollback"}',
                "[1, 2]",
                '{"action": "BAD WORD", "target": "x", "at": 1}',
                "\x00\x00\x00",
                ledger_line("restore_primary"),
            ]
        )
        + "\n"
    )
    with Ledger(path) as ledger:
        assert [r.action for r in ledger.query()] == ["restore_primary", "fallback"]
        assert ledger.stats()["invalid_lines"] == 5


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mlwarden.sidecar.healing.ledger import Ledger

    path, fsync = Path(sys.argv[1]), sys.argv[2] == "1"
    deadline = time.monotonic() + 20.0
    with Ledger(path, max_bytes=64 * 1024, backups=1000, fsync=fsync) as ledger:
        for i in range(200_000):
            ledger.append("set_weight", "canary", reason="r" * (i % 300), signals={"i": i},
                          details={"pad": "p" * (i % 150)})
            if i % 500 == 499:
                ledger.flush()  # a writer this fast would fill the queue: none dropped here
            if time.monotonic() > deadline:
                break
""")


@pytest.mark.parametrize("fsync", [False, True], ids=["no-fsync", "fsync"])
def test_a_writer_killed_mid_append_leaves_only_whole_records(tmp_path: Path, fsync: bool) -> None:
    path = tmp_path / "ledger.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "1" if fsync else "0"],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        # Kill it while it is busy: once the ledger has rotated a few times.
        deadline = time.monotonic() + 30
        while not (tmp_path / "ledger.jsonl.3").exists():
            assert proc.poll() is None, "the writer ended before it was killed"
            assert time.monotonic() < deadline, "the writer did not get going"
            time.sleep(0.01)
        time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    with Ledger(path, backups=1000, recent=200_000, fsync=False) as ledger:
        stats = ledger.stats()
        assert stats["invalid_lines"] == 0
        seen = [r.signals["i"] for r in ledger.query(limit=MAX_QUERY_LIMIT)]
        assert seen == list(range(seen[0], seen[0] - len(seen), -1))
        # Every record in every file is whole and in sequence, none missing.
        all_i = [
            LedgerRecord.from_json(line).signals["i"]
            for f in sorted(
                tmp_path.glob("ledger.jsonl*"),
                key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
            )
            for line in lines_of(f)
        ]
        assert all_i == list(range(len(all_i)))
        assert ledger.stats()["loaded"] == len(all_i)
        ledger.append("rollback", "canary")
    assert LedgerRecord.from_json(lines_of(path)[-1]).action == "rollback"


def test_concurrent_appends_from_threads_write_whole_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, max_bytes=16 * 1024, backups=1000, fsync=False, recent=10_000)
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        for i in range(150):
            ledger.append(
                "fallback", f"upstream-{n}", reason="x" * (i * 7 % 200), signals={"n": n, "i": i}
            )

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    ledger.close()
    records = [
        LedgerRecord.from_json(line) for f in tmp_path.glob("ledger.jsonl*") for line in lines_of(f)
    ]
    assert len(records) == 8 * 150
    assert len({r.id for r in records}) == 8 * 150
    for n in range(8):
        mine = sorted((r.id, r.signals["i"]) for r in records if r.signals["n"] == n)
        assert [i for _, i in mine] == list(range(150))  # id order is append order


# -- group commit: the writer thread --------------------------------------------------------


class HeldFsync:
    """``os.fsync`` as it is, noting the thread of each call; :meth:`hold` makes the next call
    wait until :meth:`release`, so that appends pile up behind a busy disk."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = os.fsync
        self.threads: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        self.threads.append(threading.get_ident())
        self.entered.set()
        assert self.gate.wait(timeout=30), "the test never released the writer"
        self.real(fd)

    def hold(self) -> None:
        self.entered.clear()
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def held_fsync(monkeypatch: pytest.MonkeyPatch) -> Any:
    held = HeldFsync(monkeypatch)
    yield held
    held.release()  # never leave a writer thread waiting


def test_append_never_fsyncs_on_the_calling_thread(tmp_path: Path, held_fsync: HeldFsync) -> None:
    with Ledger(tmp_path / "l.jsonl", fsync=True) as ledger:
        held_fsync.threads.clear()  # the directory's, at creation
        for _ in range(5):
            ledger.append("fallback", "primary")
        assert ledger.flush(timeout=10)
        assert held_fsync.threads
        assert threading.get_ident() not in held_fsync.threads


def test_appends_made_while_the_disk_is_busy_share_one_write_and_one_fsync(
    tmp_path: Path, held_fsync: HeldFsync
) -> None:
    path = tmp_path / "l.jsonl"
    with Ledger(path, fsync=True) as ledger:
        held_fsync.hold()
        first = ledger.append("breaker_opened", "primary")
        assert held_fsync.entered.wait(timeout=10)  # the writer is in the first batch's fsync
        storm = [ledger.append("fallback", "primary", signals={"i": i}) for i in range(50)]
        assert ledger.stats()["queued"] == 51  # not yet fsynced: the first one and the storm
        held_fsync.release()
        assert ledger.flush(timeout=10)
        stats = ledger.stats()
        assert stats["fsyncs"] == 2 and stats["queued"] == 0
    assert lines_of(path) == [r.to_json() for r in [first, *storm]]


def test_records_are_durable_after_flush_and_after_close(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, fsync=True)
    flushed = [ledger.append("fallback", "primary"), ledger.append("rollback", "canary")]
    assert ledger.flush(timeout=10)
    assert lines_of(path) == [r.to_json() for r in flushed]
    closed = [ledger.append("promotion", "canary", signals={"i": i}) for i in range(100)]
    ledger.close()  # drains the queue before closing the file
    with Ledger(path) as reopened:
        assert reopened.query(limit=MAX_QUERY_LIMIT) == [*flushed, *closed][::-1]


def test_a_full_queue_drops_and_counts_lines_without_blocking_the_appender(
    tmp_path: Path, held_fsync: HeldFsync, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, fsync=True, max_queued=3)
    held_fsync.hold()
    first = ledger.append("breaker_opened", "primary")
    assert held_fsync.entered.wait(timeout=10)
    queued = [ledger.append("fallback", "primary", signals={"i": i}) for i in range(3)]
    dropped: list[LedgerRecord] = []

    def storm() -> None:
        dropped.extend(ledger.append("fallback", "primary", signals={"i": i}) for i in (3, 4))

    with caplog.at_level(logging.ERROR, LOGGER):
        appender = threading.Thread(target=storm)
        appender.start()
        appender.join(timeout=10)
    # Returned while the writer is still stuck in its fsync: the appender never waited.
    assert not appender.is_alive() and not held_fsync.gate.is_set()
    assert ledger.stats()["dropped"] == 2
    assert caplog.text.count("dropping records") == 1  # once per run of drops
    assert ledger.query() == [first, *queued, *dropped][::-1]  # /-/events still sees them
    held_fsync.release()
    ledger.close()
    assert lines_of(path) == [r.to_json() for r in [first, *queued]]


def test_a_batch_that_crosses_max_bytes_rotates_between_its_lines(
    tmp_path: Path, held_fsync: HeldFsync
) -> None:
    path = tmp_path / "l.jsonl"
    with Ledger(path, max_bytes=1000, backups=20, fsync=True, recent=1000) as ledger:
        held_fsync.hold()
        ledger.append("fallback", "primary", signals={"i": 0})
        assert held_fsync.entered.wait(timeout=10)
        for i in range(1, 60):  # one batch of about 6 files' worth
            ledger.append("fallback", "primary", signals={"i": i})
        held_fsync.release()
        assert ledger.flush(timeout=10)
        assert ledger.stats()["rotations"] >= 5
    files = sorted(
        tmp_path.glob("l.jsonl*"),
        key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
    )
    seen = []
    for f in files:  # oldest first
        assert f.stat().st_size <= 1000 and f.read_bytes().endswith(b"\n")
        seen += [LedgerRecord.from_json(line).signals["i"] for line in lines_of(f)]
    assert seen == list(range(60))


def test_closing_the_sidecar_writes_every_record_appended_before_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    cfg = SidecarConfig.from_mapping(
        {"upstreams": {"primary": "http://127.0.0.1:9"}, "ledger": {"path": str(path)}},
        environ={},
    )
    sidecar = Sidecar(cfg, health_checks=False)
    for i in range(200):
        sidecar.record(action="fallback", target="primary", signals={"i": i})
    asyncio.run(sidecar.aclose())
    assert [LedgerRecord.from_json(line).signals["i"] for line in lines_of(path)] == list(
        range(200)
    )


# -- restarts and windows --------------------------------------------------------------------


def test_restart_reloads_the_most_recent_records_across_backups(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    clock = FakeClock(T0)
    with Ledger(path, max_bytes=1000, backups=10, fsync=False, clock=clock) as ledger:
        for i in range(60):
            clock.now = T0 + i
            ledger.append("set_weight", "canary", signals={"i": i})
    assert (tmp_path / "ledger.jsonl.2").exists()
    with Ledger(path, max_bytes=1000, backups=10, recent=25, clock=clock) as ledger:
        assert [r.signals["i"] for r in ledger.query()] == list(range(59, 34, -1))
        ledger.append("rollback", "canary")
        assert [r.action for r in ledger.query(limit=2)] == ["rollback", "set_weight"]


def test_count_since_covers_windows_longer_than_memory_and_survives_restarts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.jsonl"
    clock = FakeClock(T0)
    day = 86400.0
    with Ledger(path, recent=5, fsync=False, clock=clock) as ledger:
        for i in range(30):  # one rollback a day of canary-errors, one fallback of another
            clock.now = T0 + i * day
            ledger.append("rollback", "canary", policy="canary-errors")
            ledger.append("fallback", "primary", policy="errors")
        clock.now = T0 + 29 * day + 1
        week = clock.now - 7 * day
        assert ledger.count_since(week, policy="canary-errors", action="rollback") == 7
        assert ledger.count_since(week) == 14
        assert ledger.count_since(week, target="primary") == 7
        assert ledger.count_since(week, until=clock.now - 3 * day) == 8
        assert ledger.count_since(week, policy="other") == 0
    with Ledger(path, recent=5, clock=clock) as reopened:
        assert reopened.count_since(week, policy="canary-errors", action="rollback") == 7
        # Older than the horizon (8 days) is not indexed, and coverage_start says so.
        assert reopened.coverage_start() == clock.now - 8 * day
        assert reopened.count_since(T0) == 2 * 8


def test_coverage_start_is_the_oldest_retained_record_when_younger_than_the_horizon(
    tmp_path: Path,
) -> None:
    clock = FakeClock(T0)
    with Ledger(tmp_path / "l.jsonl", max_bytes=400, backups=1, fsync=False, clock=clock) as ledger:
        for i in range(10):
            clock.now = T0 + i
            ledger.append("fallback", "primary")
        assert ledger.flush(timeout=10)  # what the files retain, once written
        retained = [LedgerRecord.from_json(line).at for line in lines_of(tmp_path / "l.jsonl.1")]
        assert ledger.coverage_start() == retained[0] > T0
        assert ledger.count_since(T0) == 10  # the index still counts what rotated away


# -- the InfluxDB sink -----------------------------------------------------------------------


def test_record_line_has_tags_count_and_numeric_signals() -> None:
    rec = LedgerRecord(
        id="a",
        at=T0 + 0.5,
        action="rollback",
        target="canary v2",
        outcome="ok",
        policy="canary,errors",
        severity="critical",
        signals={
            "error_rate": 0.12,
            "open": True,
            "p99 latency": 3,
            "name": "v2",
            "bad": math.nan,
            "none": None,
        },
    )
    assert record_line(rec) == (
        "mlwarden_healing,action=rollback,actor=auto,outcome=ok,policy=canary\\,errors,"
        "severity=critical,target=canary\\ v2 count=1i,signal_error_rate=0.12,signal_open=1i,"
        "signal_p99_latency=3.0 1700000000500000000"
    )
    assert record_line(LedgerRecord(action="fallback", target="p", at=T0)) == (
        "mlwarden_healing,action=fallback,actor=auto,outcome=ok,target=p count=1i "
        "1700000000000000000"
    )


def export(vm: VictoriaMetrics, match: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(f"{vm.url}/api/v1/export?{query}", timeout=5) as resp:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]


def wait_series(
    vm: VictoriaMetrics, match: str, *, count: int, timeout: float = 10.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    series: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        vm.flush()
        series = export(vm, match)
        if len(series) >= count:
            return series
        time.sleep(0.1)
    raise AssertionError(f"expected {count} series for {match} within {timeout}s, got {series}")


@pytest.mark.servers
def test_influx_sink_writes_each_record_to_victoria_metrics(
    victoria_metrics: VictoriaMetrics,
) -> None:
    target = f"canary-{uuid.uuid4().hex[:8]}"
    clock = FakeClock(round(time.time() - 60, 3))
    settings = InfluxSettings(url=victoria_metrics.url, bucket="healing", interval_s=0.2)
    ledger = Ledger(None, clock=clock)
    with InfluxLedgerSink(settings) as sink:
        ledger.add_listener(sink)
        rollback = ledger.append(
            "rollback",
            target,
            policy="canary-errors",
            severity="critical",
            signals={"error_rate": 0.25, "open": True},
        )
        clock.now += 1
        ledger.append("promotion", target, outcome="failed", signals={"name": "v2"})
        assert sink.flush()
        assert sink.stats()["written"] == 2

    counts = wait_series(victoria_metrics, f'mlwarden_healing_count{{target="{target}"}}', count=2)
    by_action = {s["metric"]["action"]: s for s in counts}
    labels = by_action["rollback"]["metric"]
    assert {
        k: labels.get(k) for k in ("action", "actor", "outcome", "policy", "severity", "target")
    } == {
        "action": "rollback",
        "actor": "auto",
        "outcome": "ok",
        "policy": "canary-errors",
        "severity": "critical",
        "target": target,
    }
    assert "policy" not in by_action["promotion"]["metric"]
    assert by_action["rollback"]["values"] == [1]
    assert by_action["rollback"]["timestamps"] == [round(rollback.at * 1000)]
    assert by_action["promotion"]["metric"]["outcome"] == "failed"
    (rate,) = wait_series(
        victoria_metrics, f'mlwarden_healing_signal_error_rate{{target="{target}"}}', count=1
    )
    assert rate["values"] == [0.25]
    (opened,) = wait_series(
        victoria_metrics, f'mlwarden_healing_signal_open{{target="{target}"}}', count=1
    )
    assert opened["values"] == [1]


def test_influx_sink_never_blocks_or_raises_when_the_server_is_down() -> None:
    port = free_port()  # nothing listens there: connections are refused at once
    settings = InfluxSettings(
        url=f"http://{LOOPBACK}:{port}",
        bucket="b",
        interval_s=0.05,
        timeout_s=0.5,
        max_buffer_points=3,
    )
    ledger = Ledger(None)
    sink = InfluxLedgerSink(settings)
    try:
        ledger.add_listener(sink)
        started = time.monotonic()
        for _ in range(5):
            ledger.append("fallback", "primary")
        assert time.monotonic() - started < 0.5
        assert ledger.stats()["listener_errors"] == 0
        assert not sink.flush()
        deadline = time.monotonic() + 10
        while sink.stats()["write_errors"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = sink.stats()
        assert stats["write_errors"] >= 2
        assert stats["dropped_buffer_full"] == 2
        assert stats["buffered"] == 3
    finally:
        sink.close(timeout_s=1.0)
    stats = sink.stats()
    assert stats["dropped_shutdown"] == 3 and stats["buffered"] == 0
    # after close: counted, no raise
    sink.recorded(LedgerRecord(action="fallback", target="p", at=T0))
    assert sink.stats()["dropped_shutdown"] == 4


def ledger_line(action: str) -> str:
    return LedgerRecord(id="x-000001", at=T0, action=action, target="canary").to_json()


def test_the_writer_s_drops_queue_and_fsyncs_are_exported(
    tmp_path: Path, held_fsync: HeldFsync
) -> None:
    from prometheus_client import CollectorRegistry

    path = tmp_path / "ledger.jsonl"
    cfg = SidecarConfig.from_mapping(
        {
            "upstreams": {"primary": "http://127.0.0.1:9"},
            "ledger": {"path": str(path), "max_queued": 2},
        },
        environ={},
    )
    registry = CollectorRegistry()
    sidecar = Sidecar(cfg, health_checks=False, registry=registry)
    value = registry.get_sample_value
    fsyncs_before = value("mlwarden_ledger_fsyncs_total")
    held_fsync.hold()
    sidecar.record(action="fallback", target="primary")  # the writer takes it, then waits
    assert held_fsync.entered.wait(timeout=10)
    for i in range(5):  # two queued behind the held batch, three dropped
        sidecar.record(action="fallback", target="primary", signals={"i": i})
    assert value("mlwarden_ledger_queued") == 3  # two waiting, one in the held batch
    assert value("mlwarden_ledger_dropped_total") == 3
    assert value("mlwarden_ledger_write_errors_total") == 0
    held_fsync.release()
    assert sidecar.ledger.flush(timeout=10)
    assert value("mlwarden_ledger_queued") == 0
    assert value("mlwarden_ledger_fsyncs_total") >= fsyncs_before + 2
    asyncio.run(sidecar.aclose())
    assert len(lines_of(path)) == 3
