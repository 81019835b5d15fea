"""fastnas.fileio: atomic writes, JSON-lines history files, stale temporaries, full disks."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import IO

import pytest

from fastnas.errors import DataError, DiskFullError
from fastnas.fileio import (
    append_jsonl,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    remove_stale_temporaries,
    rewrite_jsonl,
)


def no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


# -------------------------------------------------------------------------------- atomic writes
def test_atomic_write_bytes_text_and_json(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"
    assert atomic_write(target, b"\x00\x01") == target
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(target, lambda handle: handle.write(b"second"))
    assert target.read_bytes() == b"second"
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_bytes() == "héllo\n".encode()
    atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.txt", "sub"]


def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")

    def half_then_fail(handle: IO[bytes]) -> None:
        handle.write(b"new but incomp")
        raise ValueError("writer failed")

    with pytest.raises(ValueError, match="writer failed"):
        atomic_write(target, half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda handle: (_ for _ in ()).throw(KeyboardInterrupt))
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left


@pytest.mark.parametrize("where", ["fsync", "mkstemp"])
def test_disk_full_names_the_file_and_keeps_the_old_one(tmp_path: Path, monkeypatch, where: str) -> None:
    target = tmp_path / "config.json"
    target.write_text("old")
    if where == "fsync":
        monkeypatch.setattr(os, "fsync", no_space)
    else:
        monkeypatch.setattr("tempfile.mkstemp", no_space)
    with pytest.raises(DiskFullError) as info:
        atomic_write_text(target, "x" * 1234)
    monkeypatch.undo()
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert f"no space left to write {target}" in message
    assert "about 1,234 bytes needed" in message and "free some space" in message
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_other_os_errors_are_not_reported_as_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    def denied(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", denied)
    with pytest.raises(OSError) as info:
        atomic_write_text(tmp_path / "a.txt", "x")
    assert not isinstance(info.value, DiskFullError) and info.value.errno == errno.EIO


# ------------------------------------------------------------------------------ stale temporaries
def test_remove_stale_temporaries_only_removes_hidden_tmp_files(tmp_path: Path) -> None:
    stale = [tmp_path / ".checkpoint.pt.a1b2c3.tmp", tmp_path / ".metrics.jsonl.zz9.tmp"]
    keep = [tmp_path / "checkpoint.pt", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for path in stale + keep:
        path.write_bytes(b"x")
    (tmp_path / ".dir.tmp").mkdir()
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dir.tmp", ".hidden", "checkpoint.pt", "notes.tmp"]
    assert remove_stale_temporaries(tmp_path / "missing") == []


# ----------------------------------------------------------------------------------- JSON lines
def test_append_jsonl_writes_each_row_as_one_whole_line(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "metrics.jsonl"
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording_write)
    rows = [{"epoch": 0, "loss": 2.5}, {"epoch": 1, "loss": 1.25, "name": "é"}]
    for row in rows:
        append_jsonl(path, row)
    monkeypatch.undo()
    assert writes == [b'{"epoch": 0, "loss": 2.5}\n', b'{"epoch": 1, "loss": 1.25, "name": "\\u00e9"}\n']
    assert path.read_bytes() == b"".join(writes)
    assert read_jsonl(path) == rows


def test_append_jsonl_short_write_is_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "metrics.jsonl"
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:5]))
    with pytest.raises(DiskFullError, match=f"no space left to write {path}"):
        append_jsonl(path, {"epoch": 0})


def test_append_jsonl_disk_full_names_the_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "alphas.jsonl"
    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(DiskFullError) as info:
        append_jsonl(path, {"epoch": 0})
    assert str(path) in str(info.value) and info.value.errno == errno.ENOSPC


def test_read_jsonl_drops_a_torn_last_line_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2, "lo')
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropping a torn last line \(16 characters"):
        assert read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]


def test_read_jsonl_keeps_a_complete_last_line_without_newline(tmp_path: Path, recwarn) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n\n{"epoch": 1}')
    assert read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]
    assert len(recwarn) == 0


def test_read_jsonl_damaged_middle_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1, oops}\n{"epoch": 2}\n')
    with pytest.raises(DataError, match=rf"{path}, line 2: not valid JSON .*repair or delete that line"):
        read_jsonl(path)


def test_read_jsonl_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    assert read_jsonl(tmp_path / "missing.jsonl") == []
    path = tmp_path / "binary.jsonl"
    path.write_bytes(b'{"a": 1}\n\xff\xfe\n')
    with pytest.raises(DataError, match="not a UTF-8 JSON-lines file"):
        read_jsonl(path)


def test_rewrite_jsonl_replaces_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2, "lo')
    rewrite_jsonl(path, [{"epoch": 0}])
    assert path.read_text() == '{"epoch": 0}\n'
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"epoch": 0}]
