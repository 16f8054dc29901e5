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

Output layout (what `fairseq-train DIR --task sentence_prediction` reads):
  DIR/input0/   binarised WordPiece tokens + dict.txt
  DIR/label/    binarised labels (neg/pos) + dict.txt, and {split}.label with the raw
                rating for `--regression-target --num-classes 1`
  DIR/raw/      the same as text: {split}.input0, {split}.label, {split}.rating, {split}.text
"""

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple, Optional

from tokenizers import Tokenizer

from .sources import VADER_CORPORA, minilm_file, rated_lines

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


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


def wordpiece_tokenizer() -> Tokenizer:
    """The pretrained encoder's own tokenizer (uncased WordPiece), without special tokens,
    truncation or padding: fairseq adds <s>/</s> and the task handles length."""
    tokenizer = Tokenizer.from_str(minilm_file("tokenizer.json").decode("utf-8"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def write_raw(reviews: list[Review], raw_dir: Path, tokenizer: Tokenizer) -> dict[str, int]:
    """Write the text files of every split; returns the number of sentences per split."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split in SPLITS:
        part = [r for r in reviews if split_of(r) == split and r.rating != 0]
        encodings = tokenizer.encode_batch([r.text for r in part], add_special_tokens=False)
        columns = {
            "input0": [" ".join(e.tokens) for e in encodings],
            "label": ["pos" if r.rating > 0 else "neg" for r in part],
            "rating": [repr(r.rating) for r in part],
            "text": [r.text for r in part],
        }
        for suffix, rows in columns.items():
            (raw_dir / f"{split}.{suffix}").write_text("\n".join(rows) + "\n", encoding="utf-8")
        sizes[split] = len(part)
    return sizes


def binarize(
    raw_dir: Path, out_dir: Path, workers: int = 1, srcdict: Optional[Path] = None
) -> None:
    """Run fairseq-preprocess on the token and label columns, copy ratings beside labels.

    srcdict: the token dictionary to use (a pretrained model's, from omoe-import-bert);
    without it fairseq-preprocess builds one from the training split."""
    for column in ("input0", "label"):
        prefixes = []
        for split in SPLITS:
            prefixes += [f"--{split}pref", str(raw_dir / f"{split}.{column}")]
        cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", *prefixes]
        cmd += ["--destdir", str(out_dir / column), "--workers", str(workers)]
        if column == "input0" and srcdict is not None:
            cmd += ["--srcdict", str(srcdict)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"fairseq-preprocess failed on {column}:\n{result.stderr[-2000:]}")
    for split in SPLITS:
        ratings = (raw_dir / f"{split}.rating").read_text(encoding="utf-8")
        (out_dir / "label" / f"{split}.label").write_text(ratings, encoding="utf-8")


def prepare(out_dir: Path, workers: int = 1, srcdict: Optional[Path] = None,
            corpus: str = "movie_reviews") -> dict[str, int]:
    """Fetch, tokenise, split and binarise one rated-sentence corpus into out_dir."""
    reviews = parse(rated_lines(corpus))
    sizes = write_raw(reviews, out_dir / "raw", wordpiece_tokenizer())
    binarize(out_dir / "raw", out_dir, workers, srcdict)
    return sizes


def cli_main() -> None:
    parser = argparse.ArgumentParser(
        prog="omoe-prepare-data",
        description="Fetch rated sentiment sentences (movie reviews by default) and binarise "
        "them for fairseq's sentence_prediction task (see the module docstring for the layout).",
    )
    parser.add_argument("out_dir", type=Path, help="output directory (created)")
    parser.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers")
    parser.add_argument("--srcdict", type=Path, default=None,
                        help="token dictionary to binarise with (omoe-import-bert's dict.txt); "
                        "default: built from the training split")
    parser.add_argument("--corpus", choices=list(VADER_CORPORA), default="movie_reviews",
                        help="which rated-sentence set of the vaderSentiment sdist")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    sizes = prepare(args.out_dir, args.workers, args.srcdict, args.corpus)
    logger.info(f"wrote {args.out_dir}: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
