"""The mirror's files on a real directory: complete uploads only, named by their sha256."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from edge_server import mirror
from edge_server.errors import BadRequest, StorageFull


def test_an_upload_larger_than_the_free_space_is_refused_before_a_byte_is_written(
    tmp_path: Path,
) -> None:
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(StorageFull, match="not enough space"):
        mirror.Upload(tmp_path, free + 1).open()
    assert list(tmp_path.iterdir()) == []


def test_only_a_complete_upload_with_the_right_sha256_is_named_and_kept(tmp_path: Path) -> None:
    data = b"0123456789" * 1000
    sha = hashlib.sha256(data).hexdigest()

    short = mirror.Upload(tmp_path, len(data) + 1)
    short.open(reserve=0)
    short.write(data)
    with pytest.raises(BadRequest, match="truncated upload"):
        short.finish(None)
    short.discard()

    wrong = mirror.Upload(tmp_path, len(data))
    wrong.open(reserve=0)
    wrong.write(data)
    with pytest.raises(BadRequest, match="sha256 mismatch"):
        wrong.finish("0" * 64)
    wrong.discard()

    long = mirror.Upload(tmp_path, 5)
    long.open(reserve=0)
    with pytest.raises(BadRequest, match="longer than its Content-Length"):
        long.write(data)
    long.discard()
    assert list(tmp_path.iterdir()) == []

    good = mirror.Upload(tmp_path, len(data))
    good.open(reserve=0)
    good.write(data[:4000])
    good.write(data[4000:])
    received = good.finish(sha)
    assert (received.sha256, received.size) == (sha, len(data))
    path = mirror.place(tmp_path, received)
    assert path == tmp_path / sha and path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == [sha]


def test_uploads_a_crash_left_behind_are_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / f"{mirror.TMP_PREFIX}dead").write_bytes(b"half")
    (tmp_path / ("a" * 64)).write_bytes(b"kept")
    assert mirror.remove_stale_uploads(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a" * 64]
