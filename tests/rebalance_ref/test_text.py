import re
import string

import numpy as np
import pytest

from rebalance_ref.text import words


def test_words_lowercases_and_strips_punctuation():
    assert words("A red Circle, left-of the BLUE square!") == ["a", "red", "circle", "left", "of", "the", "blue",
                                                              "square"]


def test_words_empty_and_bad_type():
    assert words("  ...  ") == []
    with pytest.raises(ValueError, match="text must be a str"):
        words(3)


def test_captions_in_other_scripts_keep_their_words():
    assert words("Кошка сидит на ковре.") == ["кошка", "сидит", "на", "ковре"]
    assert words("Γάτα") == ["γάτα"]
    assert words("हिन्दी भाषा") == ["हिन्दी", "भाषा"]  # vowel signs (combining marks) stay inside the word


def test_accented_words_stay_whole_and_equal_in_every_unicode_form():
    composed, decomposed = "Un café noir", "Un cafe\u0301 noir"
    assert words(composed) == words(decomposed) == ["un", "café", "noir"]
    assert words("CAFÉ") == ["café"]


def test_compatibility_forms_and_case_folding():
    assert words("ﬁsh ２０２４ Straße") == ["fish", "2024", "strasse"]  # ligature, full-width digits, sharp s


def test_cjk_ideographs_and_emoji_are_words_of_their_own():
    assert words("一只猫") == ["一", "只", "猫"]
    assert words("a dog🐶, ❤️!") == ["a", "dog", "🐶", "❤"]  # the variation selector after ❤ is dropped
    assert words("👍🏽") == ["👍"]  # a skin-tone modifier separates, it is not a word


def test_ascii_text_splits_exactly_as_the_general_rule_does():
    # The ASCII fast path must agree with the Unicode path (forced here by a trailing no-break space).
    rng = np.random.default_rng(0)
    alphabet = np.array(list(string.printable))
    samples = ["".join(rng.choice(alphabet, size=40)) for _ in range(200)] + [string.printable]
    for text in samples:
        assert words(text + "\u00a0") == words(text) == _OLD_RULE.sub(" ", text.lower()).split()


_OLD_RULE = re.compile(r"[^0-9a-z]+")  # the ASCII-only rule vocabularies were built with before Unicode support
