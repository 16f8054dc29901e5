"""`OMoETagger`: named entities with character offsets from an omoe-export ONNX model of a
`--task omoe_token_classification` checkpoint, on ONNX Runtime.

A text is cut into words as CoNLL-2003 writes them (runs of letters and digits, joined by
- ' . & / inside a word; every other punctuation mark a word of its own), each word is
tokenised on its own and tagged on its first sub-word, as in training; entities are
seqeval's spans over the word tags (the spans the validation F1 counts). A text longer
than the model's positions is tagged in consecutive pieces cut at word boundaries, as
omoe-prepare-data cuts long sentences.
"""

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from seqeval.metrics.sequence_labeling import get_entities

from .inference import OMoEClassifier

WORD = re.compile(r"\w+(?:[-'.&/]\w+)*|[^\w\s]")


@dataclass
class Entity:
    text: str
    type: str  # the tag's type: PER, LOC, ...
    start: int  # character offsets in the input: text == input[start:end]
    end: int
    score: float  # mean probability of the entity's tags over its words


@dataclass
class Tagged:
    entities: list[Entity]
    words: list[tuple[str, str]]  # every word with its predicted tag
    truncated: bool = False  # never: long texts are tagged in pieces

    def to_json(self) -> dict:
        return {"entities": [asdict(e) for e in self.entities]}


class OMoETagger(OMoEClassifier):
    """Named-entity tagging with a model written by omoe-export from a token-classification
    checkpoint.

        tagger = OMoETagger("ner.onnx")
        tagger.predict(["Peter Blackburn flew to Brussels."])[0].entities
    """

    def __init__(self, model: Path, threads: int = 0, optimization_level: Optional[str] = None):
        super().__init__(model, threads, optimization_level)
        if not self.info.tagging:
            raise ValueError(f"{model} is not a token-tagging model: serve it with "
                             + ("OMoEReader" if self.info.span_qa else "OMoEClassifier"))

    def predict(self, sentences: Sequence[str], batch_size: int = 32) -> list[Tagged]:
        """One Tagged per text, in order; raises ValueError naming the first empty text."""
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        words = []
        for i, text in enumerate(sentences):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"sentence {i} is empty" if isinstance(text, str) else
                                 f"sentence {i}: this model tags single texts, not pairs")
            words.append([(m.group(), m.start(), m.end()) for m in WORD.finditer(text)])
        pieces = [(i, piece) for i, ws in enumerate(words) for piece in self._pieces(ws)]
        tags: list[list[tuple[str, float]]] = [[] for _ in sentences]
        for start in range(0, len(pieces), batch_size):
            chunk = pieces[start:start + batch_size]
            tokens = np.full((len(chunk), max(len(ids) for _, (ids, _) in chunk)),
                             self.info.pad, dtype=np.int64)
            for row, (_, (ids, _)) in enumerate(chunk):
                tokens[row, :len(ids)] = ids
            logits = self.session.run(["logits"], {"src_tokens": tokens})[0]
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            for row, (i, (_, firsts)) in enumerate(chunk):
                best = probs[row, firsts].argmax(-1)
                tags[i] += [(self.labels[b], float(probs[row, f, b]))
                            for f, b in zip(firsts, best)]
        return [self._tagged(text, ws, ts) for text, ws, ts in zip(sentences, words, tags)]

    def _pieces(self, words: list[tuple[str, int, int]]) -> list[tuple[list[int], list[int]]]:
        """The model ids of the words in pieces of at most max_positions (<s> and </s>
        included), each with the positions of its words' first sub-words."""
        limit, pieces = self.info.max_positions - 1, []
        ids, firsts = [self.info.bos], []
        for subwords in self.tokenizer.tokenize([w for w, _, _ in words]):
            subwords = (subwords or [self.tokenizer.unknown])[:limit - 1]
            if len(ids) + len(subwords) > limit:
                pieces.append((ids + [self.info.eos], firsts))
                ids, firsts = [self.info.bos], []
            firsts.append(len(ids))
            ids += [self.index.get(t, self.info.unk) for t in subwords]
        return pieces + [(ids + [self.info.eos], firsts)]

    @staticmethod
    def _tagged(text: str, words: list[tuple[str, int, int]],
                tags: list[tuple[str, float]]) -> Tagged:
        entities = []
        for kind, first, last in get_entities([tag for tag, _ in tags]):
            start, end = words[first][1], words[last][2]
            score = sum(p for _, p in tags[first:last + 1]) / (last - first + 1)
            entities.append(Entity(text[start:end], kind, start, end, round(score, 4)))
        return Tagged(entities, [(w, t) for (w, _, _), (t, _) in zip(words, tags)])
