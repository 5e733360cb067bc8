import pytest

from rebalance_ref.text import words


def test_words_lowercases_and_strips_punctuation():
    assert words("A red Circle, left-of the BLUE square!") == ["a", "red", "circle", "left", "of", "the", "blue",
                                                              "square"]


def test_words_empty_and_bad_type():
    assert words("  ...  ") == []
    with pytest.raises(ValueError, match="text must be a str"):
        words(3)
