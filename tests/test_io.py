"""Atomic writes (rckd.io): all or nothing, with the permissions of an ordinary new file."""

import json
import os
import stat

import pytest

from rckd.io import atomic_path, write_json


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
