"""Rated-sentence sentiment data (Hutto & Gilbert 2014, shipped in the vaderSentiment sdist):
movie-review sentences by default, or tweets, product-review or news-editorial sentences
(`--corpus`), tokenised with the pretrained encoder's WordPiece tokenizer and binarised for
fairseq's `sentence_prediction` task.

Each source line is `id<TAB>mean_rating<TAB>text`, the rating a mean of 20+ raters in
[-4, 4]. The label is the rating's sign; sentences rated exactly 0 are left out (37 of the
movie reviews). The split is fixed by id, with no randomness: id % 10 == 0 -> test,
id % 10 == 1 -> valid, the rest -> train (80 / 10 / 10). Where an id is
`document_sentence` (product reviews, editorials), the document number is the id, so the
sentences of one document stay in one split.

The layout is `prepare`'s, with {split}.label beside the binarised neg/pos labels holding
the raw ratings, for `--regression-target --num-classes 1` (raw/{split}.target as text).
"""

import zlib
from pathlib import Path
from typing import NamedTuple, Optional

from .prepare import SPLITS, prepare_examples
from .sources import minilm_file, rated_lines
from .subword import SubwordTokenizer
from .tables import Example


class Review(NamedTuple):
    id: int
    rating: float
    text: str


def parse(lines: list[str]) -> list[Review]:
    """Parse `id<TAB>rating<TAB>text` lines; a malformed line is an error naming it."""
    reviews = []
    for number, line in enumerate(lines, 1):
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 3:
            raise ValueError(f"line {number}: expected id<TAB>rating<TAB>text, got {line!r}")
        document = fields[0].split("_")[0]
        reviews.append(Review(int(document), float(fields[1]), fields[2].strip()))
    return reviews


def split_of(review: Review) -> str:
    return {0: "test", 1: "valid"}.get(review.id % 10, "train")


def wordpiece_tokenizer() -> SubwordTokenizer:
    """The pretrained encoder's own tokenizer (uncased WordPiece)."""
    return SubwordTokenizer("tokenizers", minilm_file("tokenizer.json").decode("utf-8"))


# A sentence-pair task made of a rated corpus: do two reviews of one split agree in sentiment?
PAIR_CORPORA = {"movie_review_pairs": "movie_reviews"}


def sentiment_pairs(reviews: list[Review]) -> dict[str, list[Example]]:
    """Per split, the reviews (rated not 0) taken two at a time in the order of a checksum
    of their text (the source file is sorted by sentiment; this order is fixed but unrelated
    to it), labelled "same" or "different" by the signs of their ratings: a real pair task
    (each label from 20+ raters per sentence) where neither text alone gives the answer.
    Every sentence is in one pair at most; an odd one out is dropped."""
    by_split = {split: sorted((r for r in reviews if split_of(r) == split and r.rating != 0),
                              key=lambda r: (zlib.crc32(r.text.encode("utf-8")), r.id))
                for split in SPLITS}
    return {split: [Example(a.text, b.text, "same" if (a.rating > 0) == (b.rating > 0)
                            else "different") for a, b in zip(part[::2], part[1::2])]
            for split, part in by_split.items()}


def prepare(out_dir: Path, workers: int = 1, srcdict: Optional[Path] = None,
            corpus: str = "movie_reviews", max_tokens: int = 126,
            long_texts: str = "truncate") -> dict[str, int]:
    """Fetch, tokenise, split and binarise one rated-sentence corpus (or a pair task made of
    one, PAIR_CORPORA) into out_dir (max_tokens, long_texts: `prepare.write_raw`)."""
    limits = {"workers": workers, "max_tokens": max_tokens, "long_texts": long_texts}
    if corpus in PAIR_CORPORA:
        pairs = sentiment_pairs(parse(rated_lines(PAIR_CORPORA[corpus])))
        return prepare_examples(out_dir, pairs, wordpiece_tokenizer(), srcdict, **limits)
    examples = {split: [] for split in SPLITS}
    targets = {split: [] for split in SPLITS}  # the raw ratings, beside the neg/pos labels
    for review in parse(rated_lines(corpus)):
        if review.rating != 0:
            label = "pos" if review.rating > 0 else "neg"
            examples[split_of(review)].append(Example(review.text, None, label))
            targets[split_of(review)].append(repr(review.rating))
    return prepare_examples(out_dir, examples, wordpiece_tokenizer(), srcdict, targets=targets,
                            **limits)
