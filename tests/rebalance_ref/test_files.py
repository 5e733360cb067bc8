import json

import numpy as np
import pytest

from rebalance_ref.files import atomic_path, read_json, save_npy_atomic, write_json_atomic


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
