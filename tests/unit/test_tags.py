"""Metadata tags: the tokens an item's fields give; the TF-IDF vocabulary and target encoding fit on warm items."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.tags import TagFactors, TagVocab, without_words
from thaw.schema import item_tags, item_tokens, item_words


def test_item_tags_tokenises_lists_short_strings_years_and_field_shape() -> None:
    fields = {
        "title": "Toy Story (1995)",
        "description": "A cowboy doll is profoundly threatened when a new spaceman figure supplants him.",
        "genres": ["Animation", "Comedy"],
        "director": ["John Lasseter"],
        "age_rating": "G",
        "release_date": "01-Jan-1995",
        "runtime": 81,
        "empty": [],
    }
    assert item_tags(fields) == {
        "genres=Animation",
        "genres=Comedy",
        "director=John Lasseter",
        "age_rating=G",
        "release_date=01-Jan-1995",
        "runtime=81",
        "year=1995",
        "decade=199x",
        "has:title",
        "has:description",
        "has:genres",
        "has:director",
        "has:age_rating",
        "has:release_date",
        "has:runtime",
        "len:title=5",  # 16 characters
        "len:description=7",  # 80 characters
        "len:genres=2",
        "len:director=1",
        "len:age_rating=1",
        "len:release_date=4",
    }


def test_item_tags_of_prose_only_items_hold_no_values() -> None:
    tags = item_tags({"title": "Night drive", "description": "synths at dusk", "item_id": "x", "image": "a.png"})
    assert tags == {"has:title", "has:description", "len:title=4", "len:description=4"}


def test_item_words_tokenise_prose_and_long_strings_only() -> None:
    fields = {
        "title": "Toy Story (1995)",
        "description": "A cowboy doll_toy, THREATENED: a cowboy again!",
        "studio": "Pixar",  # short: a whole-value tag, not words
        "tagline": "To infinity and beyond, where no toy has gone before, again and again",  # longer than a tag
        "cast": ["Tom Hanks"],
        "item_id": "x",
    }
    assert item_words(fields) == {
        "words:title=toy",
        "words:title=story",
        "words:title=1995",
        "words:description=cowboy",
        "words:description=doll",
        "words:description=toy",
        "words:description=threatened",
        "words:description=again",
        *(f"words:tagline={w}" for w in ("to", "infinity", "and", "beyond", "where", "no", "toy", "has", "gone")),
        "words:tagline=before",
        "words:tagline=again",
    }
    assert item_tokens(fields) == item_tags(fields) | item_words(fields)
    assert without_words([item_tokens(fields)]) == [item_tags(fields)]


def test_vocab_keeps_tokens_seen_min_count_times_with_idf() -> None:
    sets = [{"a", "b"}, {"a", "c"}, {"a", "b"}, {"d"}]
    vocab = TagVocab.fit(sets, min_count=2)
    assert vocab.tokens == ["a", "b"]
    np.testing.assert_allclose(vocab.idf, [np.log(5 / 4) + 1, np.log(5 / 3) + 1], rtol=1e-6)
    rows = vocab.transform([{"a", "b", "zzz"}, {"b"}, {"zzz"}])
    expected = np.array([vocab.idf, [0, vocab.idf[1]], [0, 0]], np.float32)
    expected[:2] /= np.linalg.norm(expected[:2], axis=1, keepdims=True)
    np.testing.assert_allclose(rows, expected, rtol=1e-6)
    again = TagVocab.from_json(vocab.to_json())
    np.testing.assert_array_equal(again.transform([{"a"}, {"b", "a"}]), vocab.transform([{"a"}, {"b", "a"}]))


def test_vocab_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="min_count must be >= 1"):
        TagVocab.fit([{"a"}], min_count=0)
    with pytest.raises(ValueError, match="one idf per token"):
        TagVocab(["a", "b"], [1.0])


def test_tag_factors_by_hand() -> None:
    """Three warm items with 1-d factors 0, 2, 4 (mean 2, centred -2, 0, 2, RMS sqrt(8/3)), smoothing 1."""
    sets = [{"cast=A", "genres=X", "has:cast"}, {"cast=A", "cast=B"}, {"cast=B", "genres=X", "len:cast=1"}]
    tf = TagFactors.fit(sets, np.array([[0.0], [2.0], [4.0]]), smoothing=1.0)
    assert tf.fields == ["cast", "genres"] and tf.width == 2  # has: / len: tags are not encoded
    rms = np.sqrt(8 / 3)
    # a new item: cast A -> -2 / 3, cast B -> 2 / 3, their mean 0; genres X -> 0 / 3; an unseen tag adds nothing
    np.testing.assert_allclose(tf.transform([{"cast=A", "cast=B", "genres=X", "cast=Z"}]), [[0.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(tf.transform([{"cast=B"}, set()]), [[2 / 3 / rms, 0.0], [0.0, 0.0]], rtol=1e-6)
    # leave-one-out for the fitted rows: item 0 sees cast A as item 1 alone (0 / 2), genres X as item 2 (2 / 2)
    loo = tf.transform(sets, own=np.array([[0.0], [2.0], [4.0]]))
    np.testing.assert_allclose(loo[0], [0.0, 1 / rms], atol=1e-7)
    np.testing.assert_allclose(loo[1], [np.mean([-2 / 2, 2 / 2]) / rms, 0.0], atol=1e-7)
    again = TagFactors.load(tf.to_json(), tf.arrays())
    np.testing.assert_array_equal(again.transform(sets), tf.transform(sets))


def test_tag_factors_refuse_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="one vector per tag set"):
        TagFactors.fit([{"cast=A"}], np.zeros((2, 3)))
