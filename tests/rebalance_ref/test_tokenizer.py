import json

import numpy as np
import pytest

from rebalance_ref.files import DataError
from rebalance_ref.limits import MAX_TOKENS, MAX_VOCAB_SIZE
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


def test_unknown_words_are_named_once_in_order():
    tok = Tokenizer.build(TEXTS + ["un café noir"])
    assert tok.unknown_words("A zebra, a café, another zebra") == ["zebra", "another"]
    assert tok.encode(["café"])[0].tolist() == [[tok.cls_id, tok.index["café"]]]  # was [CLS] "caf" or [UNK]
    assert tok.unknown_words("red circle") == []


def test_check_query_refuses_empty_and_all_unknown_texts():
    tok = Tokenizer.build(TEXTS)
    with pytest.raises(DataError, match="query '...!' holds no word"):
        tok.check_query("...!")
    with pytest.raises(DataError, match=r"query 'кошка 猫': the vocabulary knows none of its words \('кошка', '猫'\)"):
        tok.check_query("кошка 猫")
    with pytest.raises(DataError, match="caption 3"):
        tok.check_query("🐶", what="caption 3")
    assert tok.check_query("a red zebra") == ["zebra"]


def test_a_tokenizer_file_written_before_unicode_support_loads_and_encodes_ascii_alike(tmp_path):
    old = tmp_path / "old.json"  # the exact layout of a version-1 file, ASCII words only
    old.write_text(json.dumps({"format": "rebalance-tokenizer", "version": 1, "max_len": 8,
                               "vocab": ["[PAD]", "[CLS]", "[UNK]", "a", "red", "circle", "2"]}))
    tok = Tokenizer.load(old)
    assert tok.encode(["A red-circle #2!"])[0].tolist() == [[1, 3, 4, 5, 6]]


def test_vocabulary_and_length_limits_are_checked(tmp_path):
    with pytest.raises(DataError, match=f"limit of {MAX_VOCAB_SIZE}"):
        Tokenizer(["[PAD]", "[CLS]", "[UNK]"] + [f"w{i}" for i in range(MAX_VOCAB_SIZE)])
    with pytest.raises(ValueError, match=f"from 1 to {MAX_TOKENS}"):
        Tokenizer(["[PAD]", "[CLS]", "[UNK]"], max_len=MAX_TOKENS + 1)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({"format": "rebalance-tokenizer", "version": 1, "max_len": 8,
                                  "vocab": ["[PAD]", "[CLS]", "[UNK]", "Red Circle"]}))
    with pytest.raises(DataError, match="edited.json: 'vocab' entry 3 'Red Circle' is not one normalised word"):
        Tokenizer.load(edited)
