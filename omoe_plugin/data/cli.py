"""`omoe-prepare-data OUT`: labelled text -> a fairseq sentence_prediction directory (layout:
`prepare`), or tagged words -> a token-classification directory (`--format conll`, layout:
`conll`), or questions with their contexts and answers -> an extractive-QA directory
(`--format squad`, layout: `squad`). The data is a user's own TSV/CSV/JSON-lines/CoNLL/SQuAD
file(s), or a bundled set (`--corpus`: the rated sentences of vaderSentiment, the default when
no file is given, BoolQ, PrivacyQA, CoNLL-2003 or Disfl-QA).

Everything a later step would trip over is checked first and reported by file and line, with
nothing written (docs/bad-input.md lists each check and its message)."""

import argparse
import logging
from pathlib import Path
from typing import Optional

from .boolq import boolq_examples
from .checks import LONG_TEXTS
from .conll import prepare_tagging
from .movie_reviews import PAIR_CORPORA, wordpiece_tokenizer
from .movie_reviews import prepare as prepare_corpus
from .prepare import SPLITS, prepare_examples
from .privacy_qa import privacy_qa_examples
from .sources import VADER_CORPORA, conll2003_texts
from .squad import disflqa_questions, prepare_span_qa
from .subword import SubwordTokenizer, from_file, gpt2_bpe, train_sentencepiece
from .tables import FORMATS, Columns, read_examples, split_deterministically
from .textfile import DEFAULT_ENCODING, encoding_name

logger = logging.getLogger(__name__)
TASK_FORMATS = ("conll", "squad")  # --format values with a task of their own
PAIR_SETS = {"boolq": boolq_examples, "privacy_qa": privacy_qa_examples}  # real pair tasks
BUNDLED = (*VADER_CORPORA, *PAIR_CORPORA, *PAIR_SETS, "conll2003", "disflqa")  # --corpus


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="omoe-prepare-data",
        description="Tokenise and binarise labelled text for fairseq's sentence_prediction "
        "task (and --task omoe_sentence_prediction): a TSV/CSV file with a header row or a "
        "JSON-lines file, one example per row, of single texts or text pairs, with a class "
        "label or a real-valued target. Without --input/--train: a bundled rated-sentence set.",
    )
    p.add_argument("out_dir", type=Path, help="output directory (replaced once complete)")
    data = p.add_argument_group("your data")
    data.add_argument("--input", type=Path, help="one file, split 80/10/10 by a checksum of "
                      "each example's text (deterministic)")
    for split in SPLITS:
        data.add_argument(f"--{split}", type=Path, help=f"the {split} split's file")
    data.add_argument("--format", choices=[*FORMATS, *TASK_FORMATS], default=None,
                      help="default: from the file name (.tsv, .csv, .jsonl); conll: tagged "
                      "words for --task omoe_token_classification (word first, tag last, a "
                      "blank line between sentences); squad: questions, contexts and answers "
                      "for --task omoe_span_qa (SQuAD's JSON, or JSON lines of question, "
                      "context, answers); both take --train/--valid/--test")
    data.add_argument("--max-tokens", type=int, default=126,
                      help="sub-words per example besides <s> and </s> (default: 126, for the "
                      "128 positions of all-MiniLM-L6-v2); a pair's two texts get 2 fewer (the "
                      "</s> after the first text and a --separator-token), a QA example 1 fewer "
                      "(the </s> after its question); see --long-texts")
    data.add_argument("--long-texts", choices=LONG_TEXTS, default="truncate",
                      help="an example over --max-tokens: truncate (the default) cuts it, and "
                      "one warning counts them and names the first (texts and pairs are cut at "
                      "the end, the second text first; CoNLL sentences into pieces at word "
                      "boundaries; SQuAD contexts into overlapping windows); refuse stops at "
                      "the first, naming its file and line")
    data.add_argument("--encoding", type=encoding_option, default=DEFAULT_ENCODING,
                      help="the encoding of every data file (default: utf-8; e.g. latin-1, "
                      "cp1252); a byte it cannot decode stops the run at its file:line:column")
    data.add_argument("--doc-stride", type=int, default=64,
                      help="squad: sub-words between the starts of a context's windows")
    data.add_argument("--max-question-tokens", type=int, default=64,
                      help="squad: a question's sub-words kept (the rest are cut)")
    data.add_argument("--text-column", default="text", help="column (JSON key) of the text")
    data.add_argument("--pair-column", default=None,
                      help="column of the second text, for sentence pairs (written as input1)")
    data.add_argument("--label-column", default="label", help="column of the label or target")
    data.add_argument("--regression", action="store_true",
                      help="labels are real-valued targets (fine-tune with --regression-target "
                      "--num-classes 1)")
    data.add_argument("--unseen-label", default=None, metavar="LABEL",
                      help="a valid or test label that the training split never shows stops "
                      "the run (naming its file and line); with this option it becomes LABEL, "
                      "a training label (e.g. other), with one warning counting them")
    tok = p.add_argument_group("tokenizer (default: all-MiniLM-L6-v2's uncased WordPiece)")
    how = tok.add_mutually_exclusive_group()
    how.add_argument("--tokenizer", type=Path, default=None,
                     help="a tokenizers JSON (.json), a BERT vocab.txt (.txt) or a "
                     "sentencepiece model (.model)")
    how.add_argument("--gpt2-bpe", type=Path, nargs=2, default=None,
                     metavar=("ENCODER_JSON", "VOCAB_BPE"),
                     help="GPT-2's byte-level BPE as fairseq's RoBERTa uses it (its "
                     "encoder.json and vocab.bpe); binarise with the model's --srcdict")
    how.add_argument("--train-spm", type=int, default=None, metavar="VOCAB_SIZE",
                     help="train a sentencepiece (unigram) model of this many pieces on the "
                     "training split (for models trained from scratch); the dictionary is "
                     "built to match it")
    p.add_argument("--srcdict", type=Path, default=None,
                   help="token dictionary to binarise with (omoe-import-bert's dict.txt), "
                   "checked against the tokenizer; default: a sentencepiece model's pieces, "
                   "else the training split's tokens")
    p.add_argument("--corpus", choices=BUNDLED,
                   default=None,
                   help="a bundled set instead of your files (default: movie_reviews); "
                   "movie_review_pairs: pairs of movie reviews labelled same or different "
                   "sentiment; boolq: BoolQ's question-passage pairs (yes/no questions); "
                   "privacy_qa: PrivacyQA's question-sentence pairs (does a privacy-policy "
                   "sentence answer the question?); "
                   "conll2003: CoNLL-2003 English NER, for "
                   "--task omoe_token_classification; disflqa: Disfl-QA's extractive "
                   "questions, for --task omoe_span_qa")
    p.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers")
    return p


def encoding_option(name: str) -> str:
    """--encoding's value, if Python knows the encoding."""
    try:
        encoding_name(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def read_splits(args, p: argparse.ArgumentParser) -> dict:
    """The user's examples per split: --input split for them, or --train/--valid/--test."""
    columns = Columns(args.text_column, args.pair_column, args.label_column)
    given = [s for s in SPLITS if getattr(args, s)]
    if args.input and given:
        p.error("give either --input (split for you) or --train/--valid/--test, not both")
    if args.unseen_label and args.regression:
        p.error("--unseen-label maps class labels: it does not go with --regression")

    def read(path: Path) -> list:
        return read_examples(path, columns, args.regression, args.format, args.encoding)

    if args.input:
        return split_deterministically(read(args.input))
    if len(given) != len(SPLITS):
        p.error(f"--train, --valid and --test go together (missing: "
                f"{', '.join('--' + s for s in SPLITS if s not in given)})")
    return {s: read(getattr(args, s)) for s in SPLITS}


def tokenizer_for(args, splits: Optional[dict]) -> SubwordTokenizer:
    if args.tokenizer:
        return from_file(args.tokenizer)
    if args.gpt2_bpe:
        return gpt2_bpe(*args.gpt2_bpe)
    if args.train_spm:
        texts = [t for e in splits["train"] for t in (e.text, e.pair) if t is not None]
        return train_sentencepiece(texts, args.train_spm)
    return wordpiece_tokenizer()


def prepare_bundled(out_dir: Path, corpus: str, srcdict: Optional[Path] = None, workers: int = 1,
                    max_tokens: int = 126, long_texts: str = "truncate") -> dict[str, int]:
    """Prepare one bundled set (BUNDLED) with the pretrained encoder's WordPiece tokenizer;
    returns the number of examples per split."""
    limits = {"max_tokens": max_tokens, "long_texts": long_texts}
    if corpus in PAIR_SETS:
        return prepare_examples(out_dir, PAIR_SETS[corpus](), wordpiece_tokenizer(), srcdict,
                                workers=workers, **limits)
    if corpus == "conll2003":
        return prepare_tagging(out_dir, {s: Path(f"conll2003/{s}.txt") for s in SPLITS},
                               wordpiece_tokenizer(), srcdict, workers, max_tokens,
                               texts=conll2003_texts(), long_texts=long_texts)
    if corpus == "disflqa":
        return prepare_span_qa(out_dir, {}, wordpiece_tokenizer(), srcdict, workers,
                               max_tokens - 1, questions=disflqa_questions(),
                               long_texts=long_texts)
    return prepare_corpus(out_dir, workers, srcdict, corpus, **limits)


def prepare_task_format(args, p: argparse.ArgumentParser) -> dict[str, int]:
    """--format conll or squad: the user's three files into a token-tagging or QA directory."""
    if (args.corpus or args.input or args.pair_column or args.regression or args.train_spm
            or args.unseen_label):
        p.error(f"--format {args.format} takes --train/--valid/--test (no --input, --corpus, "
                "--pair-column, --regression or --unseen-label) and a tokenizer file or the "
                "default one (for sentencepiece, train a model on your text with spm_train and "
                "pass it as --tokenizer)")
    given = [s for s in SPLITS if getattr(args, s)]
    if len(given) != len(SPLITS):
        p.error(f"--format {args.format} needs --train, --valid and --test")
    files = {s: getattr(args, s) for s in SPLITS}
    common = {"long_texts": args.long_texts, "encoding": args.encoding}
    if args.format == "conll":
        return prepare_tagging(args.out_dir, files, tokenizer_for(args, None), args.srcdict,
                               args.workers, args.max_tokens, **common)
    return prepare_span_qa(args.out_dir, files, tokenizer_for(args, None), args.srcdict,
                           args.workers, args.max_tokens - 1, args.doc_stride,
                           args.max_question_tokens, **common)


def cli_main(argv: Optional[list[str]] = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    user_data = args.input or any(getattr(args, s) for s in SPLITS)
    if not user_data:
        if args.tokenizer or args.gpt2_bpe or args.train_spm or args.regression or \
                args.unseen_label:
            p.error("--tokenizer, --gpt2-bpe, --train-spm, --regression and --unseen-label "
                    "apply to your own files (--input or --train/--valid/--test)")
        sizes = prepare_bundled(args.out_dir, args.corpus or "movie_reviews", args.srcdict,
                                args.workers, args.max_tokens, args.long_texts)
    else:
        if args.corpus and args.format not in TASK_FORMATS:
            p.error("--corpus prepares a bundled set: give it or your own files, not both")
        try:
            if args.format in TASK_FORMATS:
                sizes = prepare_task_format(args, p)
            else:
                splits = read_splits(args, p)
                sizes = prepare_examples(
                    args.out_dir, splits, tokenizer_for(args, splits), args.srcdict,
                    args.regression, args.workers, max_tokens=args.max_tokens,
                    long_texts=args.long_texts, unseen_label=args.unseen_label)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise SystemExit(f"omoe-prepare-data: {e}") from None
    logger.info(f"wrote {args.out_dir}: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
