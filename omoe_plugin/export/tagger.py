"""`OMoETagger`: named entities with character offsets from an omoe-export ONNX model of a
`--task omoe_token_classification` checkpoint, on ONNX Runtime.

A text is cut into words as CoNLL-2003 writes them (runs of letters and digits, joined by
- ' . & / inside a word; every other punctuation mark a word of its own), each word is
tokenised on its own and tagged on its first sub-word, as in training; entities are
seqeval's spans over the word tags (the spans the validation F1 counts). Words already
split (a list of words instead of a text: `@LH_TCC` or a URL stays one word) are tagged
exactly as given, their offsets in the words joined by single spaces. A text longer than the
model's positions is tagged in consecutive pieces cut at word boundaries, as
omoe-prepare-data cuts long sentences.
"""

import re
from dataclasses import asdict, dataclass
from typing import Optional, Union

from seqeval.metrics.sequence_labeling import get_entities

from .runtime import ServedModel, softmax, text_problem

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

    def to_json(self) -> dict:
        return {"entities": [asdict(e) for e in self.entities]}


class OMoETagger(ServedModel):
    """Named-entity tagging with a model written by omoe-export from a token-classification
    checkpoint.

        tagger = OMoETagger("ner.onnx")
        tagger.predict(["Peter Blackburn flew to Brussels."])[0].entities
    """

    kind = "tagging"

    def problem(self, item: Union[str, list[str]]) -> Optional[str]:
        if not isinstance(item, (list, tuple)):
            return text_problem(item)
        if not item:
            return "no words"
        for n, word in enumerate(item):  # words already split: each one word
            problem = text_problem(word, f"word {n}")
            if problem or len(word.split()) > 1:
                return problem or f"word {n} holds white space: give one word per item"
        return None

    def answer(self, sentences: list[Union[str, list[str]]], batch_size: int) -> list[Tagged]:
        """One Tagged per text (or list of words), in order."""
        texts = [item if isinstance(item, str) else " ".join(item) for item in sentences]
        words = []  # (word, start, end) in its text
        for item, text in zip(sentences, texts):
            if isinstance(item, str):
                words.append([(m.group(), m.start(), m.end()) for m in WORD.finditer(text)])
            else:
                starts = [0]
                for word in item[:-1]:
                    starts.append(starts[-1] + len(word) + 1)
                words.append([(w, s, s + len(w)) for w, s in zip(item, starts)])
        pieces = [(i, piece) for i, ws in enumerate(words) for piece in self._pieces(ws)]
        tags: list[list[tuple[str, float]]] = [[] for _ in sentences]
        logits = self.logits([ids for _, (ids, _) in pieces], batch_size)  # in piece order
        for (i, (_, firsts)), piece_logits in zip(pieces, logits):
            probs = softmax(piece_logits[firsts])  # [words, tags]
            best = probs.argmax(-1)
            tags[i] += [(self.labels[b], float(p[b])) for p, b in zip(probs, best)]
        return [self._tagged(text, ws, ts) for text, ws, ts in zip(texts, words, tags)]

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
            ids += self.ids(subwords)
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
