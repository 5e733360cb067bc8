import json

import numpy as np
import pytest

from rebalance_ref.tokenizer import Tokenizer

TEXTS = ["A red circle.", "a blue square left of a red circle", "the red ring"]


def test_build_orders_by_count_then_word_after_specials():
    tok = Tokenizer.build(TEXTS)
    assert tok.vocab[:3] == ["[PAD]", "[CLS]", "[UNK]"]
    assert tok.vocab[3:6] == ["a", "red", "circle"]  # counts 3, 3, 2
    assert tok.vocab_size == len(tok.vocab)
    assert "ring" not in Tokenizer.build(TEXTS, min_count=2).vocab


def test_encode_cls_pad_unk_and_batch_padding():
    tok = Tokenizer.build(TEXTS, max_len=6)
    ids, mask = tok.encode(["red circle", "a zebra"])
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == (2, 3)  # longest text: [CLS] + 2 words
    assert ids[:, 0].tolist() == [1, 1]
    assert ids[1, 2] == tok.unk_id
    assert mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    ids, mask = tok.encode(["red", "a blue square left of a red circle"])
    assert ids.shape == (2, 6)  # capped at max_len
    assert ids[0, 2:].tolist() == [0, 0, 0, 0] and mask[0].tolist() == [1, 1, 0, 0, 0, 0]
    assert tok.encode(["a blue square left of"], max_len=3)[0].shape == (1, 3)


def test_round_trip_through_json(tmp_path):
    tok = Tokenizer.build(TEXTS, max_len=12)
    path = tmp_path / "tok.json"
    tok.save(path)
    back = Tokenizer.load(path)
    assert back == tok
    ids, _ = back.encode(TEXTS)
    assert back.decode(ids) == ["a red circle", "a blue square left of a red circle", "the red ring"]
    assert back.decode(back.encode(["a unicorn"])[0][0]) == "a [UNK]"


def test_bad_files_and_arguments_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Tokenizer.load(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "rebalance-tokenizer", "version": 99, "vocab": [], "max_len": 4}))
    with pytest.raises(ValueError, match="version"):
        Tokenizer.load(other)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a rebalance tokenizer"):
        Tokenizer.load(wrong)
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "missing.json")
    tok = Tokenizer.build(TEXTS)
    with pytest.raises(ValueError, match="single str"):
        tok.encode("a red circle")
    with pytest.raises(ValueError, match="max_len"):
        tok.encode(["a"], max_len=0)
    with pytest.raises(ValueError, match="ids"):
        tok.decode([999])


def test_importable_without_torch():
    import subprocess
    import sys

    code = "import sys, rebalance_ref.tokenizer; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
