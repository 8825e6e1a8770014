"""Atomic writes (rckd.io): all or nothing, with the permissions of an ordinary new file."""

import json
import os
import stat

import pytest

from rckd import io as rckd_io
from rckd.io import atomic_path, write_csv, write_json


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    target = tmp_path / "out" / "result.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_a_write_replaces_the_old_file_whole(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"top1": 1.0})
    write_json(target, {"top1": 2.0})
    assert json.loads(target.read_text()) == {"top1": 2.0}
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_csv_columns_default_to_the_union_of_keys_in_first_seen_order(tmp_path):
    target = tmp_path / "table.csv"
    write_csv(target, [{"b": 1, "a": 2.5}, {"a": "x,y", "c": None}])
    assert target.read_bytes() == b'b,a,c\n1,2.5,\n,"x,y",\n'
    write_csv(target, [{"a": 1}], columns=["z", "a"])
    assert target.read_text() == "z,a\n,1\n"
    write_csv(target, [], columns=["a", "b"])
    assert target.read_text() == "a,b\n"
    write_csv(target, [])
    assert target.read_text() == ""


def test_the_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced_inodes = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced_inodes.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(rckd_io.os, "fsync", recording_fsync)
    write_json(tmp_path / "a.json", {})
    assert synced_inodes == [(tmp_path / "a.json").stat().st_ino, tmp_path.stat().st_ino]
