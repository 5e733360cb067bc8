import json
import os
import re
import warnings

import numpy as np
import pytest

from rebalance_ref.files import (
    DataError,
    atomic_path,
    path_inside,
    read_json,
    read_jsonl,
    save_npy_atomic,
    write_json_atomic,
    write_text_atomic,
)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"step": 1})
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"step": 2, "half": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_npy_keeps_its_name_and_content(tmp_path):
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_npy_atomic(tmp_path / "features", array)  # no .npy suffix appended
    np.testing.assert_array_equal(np.load(tmp_path / "features"), array)


def test_read_json_names_the_file_and_the_place(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n "b": }')
    with pytest.raises(ValueError, match=r"bad.json: malformed JSON at line 2"):
        read_json(bad)
    with pytest.raises(FileNotFoundError, match="absent.json: file not found"):
        read_json(tmp_path / "absent.json")
    with pytest.raises(KeyError):
        read_json(tmp_path / "absent.json", missing=KeyError)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_json(binary)


def test_rewriting_a_text_file_atomically_keeps_the_old_text_when_the_writer_dies(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    write_text_atomic(log, '{"step": 1}\n')
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(log, '{"step": 1}\n{"step": 2}\n')
    assert log.read_text() == '{"step": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_torn_last_line_of_a_jsonl_log_is_dropped_with_a_warning(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"stage": 1, "step": 1}\n\n{"stage": 1, "step": 2}\n{"stage": 1, "st')
    with pytest.warns(UserWarning, match=r"metrics.jsonl: dropped the unfinished last line 4"):
        rows = read_jsonl(log)
    assert rows == [{"stage": 1, "step": 1}, {"stage": 1, "step": 2}]
    log.write_text('{"step": 1}\n{"step": 2}')  # complete, only the newline is missing: kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(log) == [{"step": 1}, {"step": 2}]


def test_a_malformed_line_inside_a_jsonl_log_is_an_error_naming_file_and_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl line 2: malformed JSON"):
        read_jsonl(log)
    log.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"metrics.jsonl line 2: expected a JSON object, got list"):
        read_jsonl(log)
    with pytest.raises(FileNotFoundError, match="absent.jsonl: file not found"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_data_error_is_the_value_error_every_reader_raises(tmp_path):
    assert issubclass(DataError, ValueError)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(DataError, match="bad.json"):
        read_json(bad)


def test_paths_named_by_a_file_stay_inside_their_folder(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("secret")
    assert path_inside(root, "images/a.png", "meta.json", "image") == (root / "images" / "a.png").resolve()
    assert path_inside(root, "images/../b.png", "meta.json") == (root / "b.png").resolve()  # stays inside
    for name in ("../outside.txt", "/etc/passwd", "images/../../outside.txt"):
        with pytest.raises(DataError, match=f"meta.json: image {re.escape(repr(name))} escapes"):
            path_inside(root, name, "meta.json", "image")
    (root / "link.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(DataError, match=r"'link.txt' escapes .*outside.txt"):
        path_inside(root, "link.txt", "meta.json")
    for name in ("", 3, None):
        with pytest.raises(DataError, match="must be a non-empty relative path"):
            path_inside(root, name, "meta.json")
