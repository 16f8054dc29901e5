"""Labelled examples -> a fairseq `sentence_prediction` data directory, written whole or not at
all (built in a temporary directory beside it, then renamed into place).

Layout (what `fairseq-train DIR --task sentence_prediction` reads):
  DIR/input0/   binarised tokens of the (first) text + dict.txt
  DIR/input1/   the second text of sentence pairs, same dictionary
  DIR/label/    binarised class labels + dict.txt; or {split}.label with the real-valued
                targets (regression), read by `--regression-target --num-classes 1`
  DIR/raw/      the same as text: {split}.input0/.input1 (tokens), .label, .text/.pair
  DIR/tokenizer.json or DIR/spm.model: the tokenizer, which omoe-export embeds in the model
  DIR/omoe-data.json: the classes (in class-index order) and positions (`record`), which
                --task omoe_sentence_prediction checks --num-classes against

Before anything is written, the examples are checked (`checks`): a valid or test label that
training never shows stops the run (or is mapped, --unseen-label), and an example longer than
--max-tokens sub-words is truncated (reported once) or refused (--long-texts refuse). A text's
line breaks become spaces, so the raw files keep one example a line.
"""

import shutil
from pathlib import Path
from typing import Optional

from fairseq.binarizer import FileBinarizer, VocabularyDatasetBinarizer
from fairseq.data import Dictionary
from fairseq.tasks.sentence_prediction import SentencePredictionTask

from .checks import LongTexts, fit_pair, map_unseen_labels
from .output import building
from .record import dictionary_labels, write_record
from .subword import SubwordTokenizer
from .tables import Example
from .textfile import one_line

SPLITS = ("train", "valid", "test")


def write_raw(splits: dict[str, list[Example]], tokenizer: SubwordTokenizer, raw_dir: Path,
              targets: Optional[dict[str, list[str]]] = None, max_tokens: int = 126,
              long_texts: str = "truncate") -> dict[str, int]:
    """The text files of every split, each example on one line (line breaks in a text become
    spaces) and within max_tokens sub-words (`limits`); returns the examples per split.

    targets: real-valued targets per split to keep beside class labels ({split}.target)."""
    raw_dir.mkdir(parents=True)
    pairs = any(e.pair is not None for part in splits.values() for e in part)
    limit = limits(pairs, max_tokens, long_texts)
    for split in SPLITS:
        part = splits[split]
        texts = [one_line(e.text) for e in part]
        seconds = [one_line(e.pair) for e in part] if pairs else [None] * len(part)
        firsts = tokenizer.tokenize(texts)
        others = tokenizer.tokenize(seconds) if pairs else seconds
        fitted = [fit_pair(a, b, limit, e.where or f"the {split} split's example {i + 1}")
                  for i, (a, b, e) in enumerate(zip(firsts, others, part))]
        columns = {"input0": [" ".join(a) for a, _ in fitted],
                   "label": [e.label for e in part], "text": texts}
        if pairs:
            columns["input1"] = [" ".join(b) for _, b in fitted]
            columns["pair"] = seconds
        if targets is not None:
            columns["target"] = targets[split]
        for suffix, rows in columns.items():
            (raw_dir / f"{split}.{suffix}").write_text("".join(r + "\n" for r in rows),
                                                       encoding="utf-8")
    limit.report()
    return {split: len(splits[split]) for split in SPLITS}


def limits(pairs: bool, max_tokens: int, long_texts: str) -> LongTexts:
    """The --long-texts policy for single texts (max_tokens sub-words) or pairs: both texts
    within max_tokens less 2, for the </s> after the first text and a --separator-token."""
    if not pairs:
        return LongTexts(long_texts, max_tokens, "text", "truncated")
    return LongTexts(long_texts, max_tokens - 2, "pair", "truncated, the second text first",
                     f"--max-tokens {max_tokens} less 2: the </s> after the first text and a "
                     "--separator-token")


def check_dictionary(raw_dir: Path, inputs: list[str], srcdict: Path,
                     tokenizer: SubwordTokenizer) -> None:
    """Stop if the tokenizer emits tokens the dictionary does not have: a tokenizer that does
    not match the model's dictionary would silently map them all to <unk>."""
    dictionary = Dictionary.load(str(srcdict))
    known = set(dictionary.symbols) | {tokenizer.unknown}
    unknown, total = set(), set()
    for split in SPLITS:
        for column in inputs:
            for line in (raw_dir / f"{split}.{column}").read_text(encoding="utf-8").splitlines():
                tokens = set(line.split())
                total |= tokens
                unknown |= tokens - known
    if unknown:
        examples = ", ".join(repr(t) for t in sorted(unknown)[:5])
        raise ValueError(
            f"the tokenizer does not match the dictionary {srcdict}: {len(unknown)} of the "
            f"{len(total)} distinct tokens it produced are not in it (e.g. {examples}); use "
            "the tokenizer the dictionary was built with (for omoe-import-bert's dict.txt, "
            "the checkpoint's tokenizer.json or vocab.txt)"
        )


def write_vocabulary_dictionary(tokenizer: SubwordTokenizer, path: Path) -> None:
    """A fairseq dict.txt holding every token the tokenizer can emit, in its order, so the
    dictionary matches the tokenizer exactly (fairseq's own specials are not repeated)."""
    specials = {"<s>", "<pad>", "</s>", "<unk>", tokenizer.unknown}
    path.write_text("".join(f"{t} 1\n" for t in tokenizer.vocabulary() if t not in specials),
                    encoding="utf-8")


def write_training_dictionary(raw_dir: Path, inputs: list[str], path: Path, workers: int) -> None:
    """The dictionary fairseq-preprocess would build from the training split, counted over
    every input column (a pair's second texts included)."""
    files = [str(raw_dir / f"train.{column}") for column in inputs]
    SentencePredictionTask.build_dictionary(files, workers=workers).save(str(path))


def binarize(raw_dir: Path, out_dir: Path, srcdict: Path, workers: int = 1,
             regression: bool = False, label_dict: Optional[Path] = None) -> None:
    """What `fairseq-preprocess --only-source` writes for the token columns with the dictionary
    srcdict and, for classification, the labels (with label_dict if given, else counted from
    train as fairseq-preprocess counts); regression targets are copied as text. Done here with
    fairseq's own binariser, byte for byte fairseq-preprocess's files without starting Python
    and fairseq again for every column."""
    for column in _inputs(raw_dir) + ([] if regression else ["label"]):
        given = srcdict if column != "label" else label_dict
        if given is not None:
            dictionary = Dictionary.load(str(given))
        else:
            dictionary = SentencePredictionTask.build_dictionary(  # as fairseq-preprocess counts
                [str(raw_dir / f"train.{column}")], workers=workers, threshold=0)
        (out_dir / column).mkdir(parents=True, exist_ok=True)
        dictionary.save(str(out_dir / column / "dict.txt"))
        for split in SPLITS:
            FileBinarizer.multiprocess_dataset(
                str(raw_dir / f"{split}.{column}"), "mmap",
                VocabularyDatasetBinarizer(dictionary, append_eos=True),
                str(out_dir / column / split), vocab_size=len(dictionary), num_workers=workers)
    if regression:
        (out_dir / "label").mkdir()
    for split in SPLITS:
        targets = raw_dir / f"{split}.{'label' if regression else 'target'}"
        if targets.exists():
            shutil.copyfile(targets, out_dir / "label" / f"{split}.label")


def binarize_with(work: Path, tokenizer: SubwordTokenizer, srcdict: Optional[Path],
                  workers: int, regression: bool = False,
                  label_dict: Optional[Path] = None) -> None:
    """Binarise work/raw into work and save the tokenizer beside it. srcdict: the model's
    token dictionary (checked against the tokenizer); default: one built from the
    tokenizer's vocabulary for sentencepiece, from the training split otherwise. Every
    input column is binarised with the same dictionary, as sentence_prediction reads them."""
    raw = work / "raw"
    if srcdict is not None:
        check_dictionary(raw, _inputs(raw), srcdict, tokenizer)
    else:
        srcdict = work / "dictionary.txt"
        if tokenizer.kind == "sentencepiece":
            write_vocabulary_dictionary(tokenizer, srcdict)
        else:
            write_training_dictionary(raw, _inputs(raw), srcdict, workers)
    binarize(raw, work, srcdict, workers, regression, label_dict)
    tokenizer.save(work)
    (work / "dictionary.txt").unlink(missing_ok=True)


def prepare_examples(out_dir: Path, splits: dict[str, list[Example]], tokenizer: SubwordTokenizer,
                     srcdict: Optional[Path] = None, regression: bool = False, workers: int = 1,
                     targets: Optional[dict[str, list[str]]] = None, max_tokens: int = 126,
                     long_texts: str = "truncate",
                     unseen_label: Optional[str] = None) -> dict[str, int]:
    """Check, tokenise, binarise and save the tokenizer and the record into out_dir
    (`binarize_with`), replacing it only once the whole directory is written; returns the
    number of examples per split. max_tokens, long_texts: see `write_raw`; unseen_label:
    `checks.map_unseen_labels` (classification only)."""
    empty = [s for s in SPLITS if not splits.get(s)]
    if empty:
        raise ValueError(f"no examples in the {', '.join(empty)} split(s)")
    if not regression:
        splits = map_unseen_labels(splits, unseen_label)
    with building(out_dir) as work:
        sizes = write_raw(splits, tokenizer, work / "raw", targets, max_tokens, long_texts)
        binarize_with(work, tokenizer, srcdict, workers, regression)
        labels = None if regression else dictionary_labels(work / "label" / "dict.txt")
        write_record(work, task="sentence_prediction", regression=regression,
                     targets=regression or targets is not None,
                     num_classes=1 if regression else len(labels), labels=labels,
                     pairs=(work / "input1").is_dir(), max_tokens=max_tokens,
                     max_positions=max_tokens + 2, sizes=sizes)
    return sizes


def _inputs(raw_dir: Path) -> list[str]:
    """The token columns written: input0, and input1 for pairs."""
    return [c for c in ("input0", "input1") if (raw_dir / f"train.{c}").exists()]
