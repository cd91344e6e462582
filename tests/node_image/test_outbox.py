"""The durable outbox: sequence numbers, acknowledgements, and crashes, on real files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node_image.agent.outbox import Outbox, OutboxError
from registration.desired import Condition

APPLIED = [Condition(type="config", status="Applied", reason="Applied")]


def test_sequence_numbers_continue_across_reopen_and_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    outbox = Outbox.open(path)
    assert [outbox.append(1, APPLIED).seq for _ in range(3)] == [1, 2, 3]
    assert outbox.ack(3).removed == 3
    assert len(outbox) == 0

    # Everything was acknowledged and removed; a new process must still not reuse 1..3.
    reopened = Outbox.open(path)
    assert reopened.next_seq == 4 and reopened.acked_seq == 3
    assert reopened.append(2, APPLIED).seq == 4


def test_ack_removes_only_acknowledged_events_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    outbox = Outbox.open(path, fsync=False)
    for generation in range(1, 6):
        outbox.append(generation, APPLIED)
    assert outbox.ack(3).removed == 3
    assert [e.seq for e in outbox.pending()] == [4, 5]
    # An older or repeated acknowledgement changes nothing.
    assert outbox.ack(2).removed == 0
    assert outbox.ack(3).removed == 0

    reopened = Outbox.open(path)
    assert [(e.seq, e.observed_generation) for e in reopened.pending()] == [(4, 4), (5, 5)]
    assert reopened.pending(limit=1)[0].seq == 4
    assert reopened.pending()[0].conditions == APPLIED


def test_a_partial_temp_file_left_by_a_crash_is_ignored_and_cleaned(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    outbox = Outbox.open(path)
    outbox.append(1, APPLIED)
    outbox.append(1, APPLIED)
    # A write cut short by kill -9: the temp file never got renamed over outbox.json.
    leftover = tmp_path / ".outbox.json.tmp-4242-deadbeef"
    leftover.write_bytes(b'{"format": 1, "next_seq": 3, "acked_seq": 0, "events": [{"seq": 3, "obs')
    foreign = tmp_path / ".other.json.tmp-4242-deadbeef"
    foreign.write_bytes(b"not ours")

    reopened = Outbox.open(path)
    assert [e.seq for e in reopened.pending()] == [1, 2]
    assert reopened.next_seq == 3
    assert not leftover.exists()
    assert foreign.exists()  # only the outbox's own temp files are cleaned


def test_an_ack_beyond_anything_assigned_moves_next_seq_past_it(tmp_path: Path) -> None:
    outbox = Outbox.open(tmp_path / "outbox.json")
    outbox.append(1, APPLIED)
    result = outbox.ack(10)
    assert result.ahead and result.removed == 1
    assert outbox.append(1, APPLIED).seq == 11


def test_a_corrupt_outbox_is_an_error_not_silently_emptied(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    path.write_text('{"events": [')
    with pytest.raises(OutboxError, match="not JSON"):
        Outbox.open(path)
    path.write_text(json.dumps({"events": [{"seq": 0}], "next_seq": 1}))
    with pytest.raises(OutboxError, match="malformed"):
        Outbox.open(path)


WRITER = """
import sys
from pathlib import Path
from node_image.agent.outbox import Outbox
from registration.desired import Condition
outbox = Outbox.open(Path(sys.argv[1]))
conditions = [Condition(type="config", status="Applied", message="x" * 2000)]
while True:
    event = outbox.append(7, conditions)
    if event.seq % 3 == 0:
        outbox.ack(event.seq - 2)
    print(event.seq, flush=True)
"""


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.5])
def test_kill9_while_appending_leaves_an_outbox_that_resumes_without_reusing_seqs(
    tmp_path: Path, delay: float
) -> None:
    path = tmp_path / "outbox.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the writer is up and has appended once
    assert first.strip() == "1"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    printed = [int(line) for line in [first, *proc.stdout.read().split()] if str(line).strip()]
    proc.stdout.close()

    outbox = Outbox.open(path)
    seqs = [e.seq for e in outbox.pending()]
    # Every seq the writer saw returned is durable: acknowledged or still pending.
    assert seqs == list(range(outbox.acked_seq + 1, outbox.next_seq))
    assert outbox.next_seq > max(printed)
    assert outbox.append(7, APPLIED).seq == outbox.next_seq - 1 > max(printed)
    assert not list(tmp_path.glob(".outbox.json.tmp-*"))
