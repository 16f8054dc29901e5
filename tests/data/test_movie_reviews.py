"""Movie-review data: parsing, the fixed split, and the binarised layout fairseq reads."""

from collections import Counter

import pytest
from fairseq.data import Dictionary, data_utils

from omoe_plugin.data.movie_reviews import Review, parse, split_of
from omoe_plugin.data.sources import VADER_CORPORA, rated_lines


def test_parse_reads_id_rating_text_with_crlf():
    assert parse(["12\t-1.5\tNot good .\r"]) == [Review(12, -1.5, "Not good .")]


def test_parse_names_a_malformed_line():
    with pytest.raises(ValueError, match="line 2"):
        parse(["1\t0.5\tfine", "2\tno rating here"])


def test_a_document_sentence_id_keeps_a_document_in_one_split():
    reviews = parse(["12_1\t0.4\tGood.", "12_2\t-0.2\tBad.", "31_1\t1\tFine."])
    assert [r.id for r in reviews] == [12, 12, 31]
    assert {split_of(r) for r in reviews[:2]} == {"train"} and split_of(reviews[2]) == "valid"


def test_every_vader_corpus_is_read_from_the_sdist():
    sizes = {name: len(rated_lines(name)) for name in VADER_CORPORA}
    assert sizes == {"movie_reviews": 10605, "tweets": 4200, "amazon": 3708, "nyt": 5190}
    assert all(len(parse(rated_lines(name))) == n for name, n in sizes.items())
    with pytest.raises(ValueError, match="unknown corpus 'imdb'"):
        rated_lines("imdb")


def test_split_is_fixed_by_id():
    splits = [split_of(Review(i, 1.0, "x")) for i in range(20)]
    assert splits.count("test") == 2 and splits.count("valid") == 2
    assert split_of(Review(30, 1.0, "x")) == "test" and split_of(Review(41, 1.0, "x")) == "valid"


def test_prepared_data_is_complete_and_consistent(movie_reviews):
    out, sizes = movie_reviews
    assert sum(sizes.values()) == 10605 - 37  # all sentences but those rated exactly 0
    assert sizes["train"] > 8 * sizes["test"] > 0
    words = Dictionary.load(str(out / "input0" / "dict.txt"))
    labels = Dictionary.load(str(out / "label" / "dict.txt"))
    assert {"neg", "pos"} <= set(labels.symbols) and "the" in words.symbols
    for split, size in sizes.items():
        tokens = data_utils.load_indexed_dataset(str(out / "input0" / split), words)
        assert len(tokens) == size
        ratings = (out / "label" / f"{split}.label").read_text().split()
        raw_labels = (out / "raw" / f"{split}.label").read_text().split()
        assert len(ratings) == size
        assert all((float(r) > 0) == (lab == "pos") for r, lab in zip(ratings, raw_labels))
    first = (out / "raw" / "train.input0").read_text().splitlines()[0]
    assert "##" in (out / "raw" / "train.input0").read_text() and first == first.lower()


def test_sentiment_pairs_are_disjoint_pairs_of_one_split_labelled_by_their_signs():
    from omoe_plugin.data.movie_reviews import sentiment_pairs

    reviews = parse(rated_lines())
    pairs = sentiment_pairs(reviews)
    rating = {r.text: r.rating for r in reviews}  # one sentence occurs twice, rated alike
    for name, part in pairs.items():
        texts = Counter(t for e in part for t in (e.text, e.pair))
        rated = [r for r in reviews if split_of(r) == name and r.rating != 0]
        assert texts <= Counter(r.text for r in rated) and len(part) == len(rated) // 2
        assert all(e.label == ("same" if (rating[e.text] > 0) == (rating[e.pair] > 0)
                               else "different") for e in part)
    labels = [e.label for e in pairs["train"]]
    assert len(pairs["train"]) == 8457 // 2 and 0.4 < labels.count("same") / len(labels) < 0.6
