"""Metadata tags: the tokens an item's fields give, and the TF-IDF vocabulary fitted on warm items."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.tags import TagVocab
from thaw.schema import item_tags


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
