"""CoNLL-format token tagging data (NER) -> a directory for `--task omoe_token_classification`.

Input: one word per line, whitespace-separated columns, the word first and its tag last
(CoNLL-2003: `word POS chunk tag`), a blank line between sentences, `-DOCSTART-` lines
between documents. Tags are `O` or `B-`/`I-`/`E-`/`S-` + a type (IOB1, IOB2 or IOBES).

Each word is tokenised on its own; its tag goes to its first sub-word and the rest are
labelled `<pad>`, which the loss and the metrics ignore (BERT's recipe). A sentence longer
than `max_tokens` sub-words is cut at word boundaries into consecutive pieces, each its own
example (an entity that crosses a cut is split in two), reported once with the number of such
sentences and the first one; `--long-texts refuse` stops at it instead.

Layout (`prepare`'s, one example per line):
  DIR/input0/  binarised sub-word tokens + dict.txt
  DIR/label/   binarised sub-word tags (`<pad>` = ignored) + dict.txt, the training tag set
  DIR/raw/     {split}.input0 / .label as text, and {split}.words / .tags, the words and tags
  DIR/omoe-data.json  the tags and positions (`record`)
"""

import re
from pathlib import Path
from typing import NamedTuple, Optional

from .checks import LongTexts, unseen_message
from .output import building
from .prepare import SPLITS, binarize_with
from .record import write_record
from .subword import SubwordTokenizer
from .textfile import DEFAULT_ENCODING, read_text

TAG = re.compile(r"^(O|[BIES]-\S+)$")
IGNORED = "<pad>"  # the label of a word's second and later sub-words


class TaggedSentence(NamedTuple):
    words: list[str]
    tags: list[str]
    where: str  # "file:line" of its first word, for messages


def read_conll(path: Path, text: Optional[str] = None,
               encoding: str = DEFAULT_ENCODING) -> list[TaggedSentence]:
    """The sentences of a CoNLL file (text: its content, if already read; else decoded with
    encoding). Every word line must have as many columns as the file's first one (at least
    two): a line that does not, or whose tag is not a BIO/BIOES tag, is an error naming the
    file and line."""
    if text is None:
        if not path.is_file():
            raise FileNotFoundError(f"CoNLL file {path} does not exist")
        text = read_text(path, encoding)
    sentences, words, tags, start, columns = [], [], [], "", None
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append(TaggedSentence(words, tags, start))
            words, tags = [], []
            continue
        columns = columns or len(fields)
        if len(fields) != columns or columns < 2:
            raise ValueError(f"{path}:{number}: expected {max(columns, 2)} columns (the word "
                             f"first, its tag last), got {len(fields)}: {line!r}")
        if not TAG.match(fields[-1]):
            raise ValueError(f"{path}:{number}: {fields[-1]!r} is not a tag (O, or B-/I-/E-/S- "
                             "and a type, e.g. B-PER)")
        if not words:
            start = f"{path}:{number}"
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        sentences.append(TaggedSentence(words, tags, start))
    if not sentences:
        raise ValueError(f"{path}: no sentences (one word and its tag per line, blank lines "
                         "between sentences)")
    return sentences


def check_tag_sets(splits: dict[str, list[TaggedSentence]]) -> list[str]:
    """The training split's tag set, sorted; a tag of another split that training never
    shows (a model could not predict it) is an error naming the sentence it is in."""
    known = sorted({t for s in splits["train"] for t in s.tags})
    for split in SPLITS[1:]:
        for sentence in splits[split]:
            unseen = set(sentence.tags) - set(known)
            if unseen:
                raise ValueError(unseen_message(sentence.where, "tag", sorted(unseen)[0], split,
                                                known) + "; the tag sets of the splits must agree")
    return known


def align(sentence: TaggedSentence, tokenizer: SubwordTokenizer,
          max_tokens: int) -> list[tuple[list[str], list[str], list[str], list[str]]]:
    """The sentence as pieces of at most max_tokens sub-words, cut at word boundaries, each
    (sub-words, sub-word labels, words, tags)."""
    pieces, current = [], ([], [], [], [])
    for word, tag, subwords in zip(sentence.words, sentence.tags,
                                   tokenizer.tokenize(sentence.words)):
        if not subwords:  # e.g. a control character WordPiece drops
            if tokenizer.unknown is None:
                raise ValueError(f"{sentence.where}: the tokenizer gives no token for {word!r}")
            subwords = [tokenizer.unknown]
        if len(subwords) > max_tokens:
            raise ValueError(f"{sentence.where}: the word {word[:40]!r} alone is {len(subwords)} "
                             f"sub-words, more than --max-tokens {max_tokens}")
        if len(current[0]) + len(subwords) > max_tokens:
            pieces.append(current)
            current = ([], [], [], [])
        current[0].extend(subwords)
        current[1].extend([tag] + [IGNORED] * (len(subwords) - 1))
        current[2].append(word)
        current[3].append(tag)
    return pieces + [current]


def prepare_tagging(out_dir: Path, files: dict[str, Path], tokenizer: SubwordTokenizer,
                    srcdict: Optional[Path] = None, workers: int = 1, max_tokens: int = 126,
                    texts: Optional[dict[str, str]] = None, long_texts: str = "truncate",
                    encoding: str = DEFAULT_ENCODING) -> dict[str, int]:
    """Read, align, binarise and save the tokenizer into out_dir, replacing it only once the
    whole directory is written; returns the number of examples (pieces) per split.

    files: the CoNLL file of each split; texts: their contents where already read (a
    bundled set); max_tokens: sub-words per example (the model's positions less <s>, </s>);
    long_texts: a longer sentence is cut into pieces ("truncate") or stops the run
    ("refuse"); encoding: the files' (--encoding)."""
    splits = {s: read_conll(files[s], (texts or {}).get(s), encoding) for s in SPLITS}
    tag_set = check_tag_sets(splits)
    sizes, pieces_of_long = {}, 0
    limit = LongTexts(long_texts, max_tokens, "sentence", "cut into pieces at word boundaries")
    with building(out_dir) as work:
        raw = work / "raw"
        raw.mkdir()
        for split in SPLITS:
            pieces = []
            for sentence in splits[split]:
                parts = align(sentence, tokenizer, max_tokens)
                if len(parts) > 1:
                    limit.over(sentence.where, sum(len(p[0]) for p in parts))
                    pieces_of_long += len(parts)
                pieces += parts
            for i, suffix in enumerate(("input0", "label", "words", "tags")):
                (raw / f"{split}.{suffix}").write_text(
                    "".join(" ".join(p[i]) + "\n" for p in pieces), encoding="utf-8")
            sizes[split] = len(pieces)
        tags = work / "tags.txt"
        tags.write_text("".join(f"{t} 1\n" for t in tag_set), encoding="utf-8")
        binarize_with(work, tokenizer, srcdict, workers, label_dict=tags)
        tags.unlink()
        write_record(work, task="omoe_token_classification", num_classes=len(tag_set),
                     labels=tag_set, max_tokens=max_tokens, max_positions=max_tokens + 2,
                     sizes=sizes)
    limit.report(f", {pieces_of_long} pieces in all")
    return sizes
