"""A fine-tuned omoe_roberta checkpoint as the module `omoe-export` exports (encoder and one
classification, token-tagging or answer-span head, routing kept as an output), with the
serving metadata the ONNX file carries: tokenizer, dictionary, labels, shapes."""

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from fairseq.data import Dictionary
from fairseq.tasks.sentence_prediction import SentencePredictionTask

from ..convert.checkpoint import encoder_config, read_model_checkpoint
from ..data.movie_reviews import wordpiece_tokenizer
from ..data.subword import SubwordTokenizer, from_file, saved_in
from ..models import OMoERobertaConfig, OMoERobertaModel
from ..models.encoder import OMoEEncoder, is_moe_layer
from ..models.omoe_roberta import SPAN_HEAD, TOKEN_HEAD
from .serving_info import ServingInfo

HEAD = "sentence_classification_head"
TASK_HEADS = {"omoe_token_classification": TOKEN_HEAD, "omoe_span_qa": SPAN_HEAD}  # else HEAD


class ExportedClassifier(nn.Module):
    """The inference forward of a classifier: no MoE statistics, no hidden states."""

    def __init__(self, model: OMoERobertaModel, head: Optional[str] = None) -> None:
        """head: the name of the head to run; default: the model's only head (load_classifier
        keeps one), else HEAD."""
        super().__init__()
        heads = model.classification_heads
        self.encoder = model.encoder
        self.head = heads[head or (next(iter(heads)) if len(heads) == 1 else HEAD)]

    def forward(self, src_tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """src_tokens [B, T] -> logits [B, C] ([B, T, C] for a token head) fp32 (+ experts
        [B, T, L, k] int64 if MoE)."""
        features, extra = self.encoder(src_tokens)
        logits = self.head(features).float()
        if not extra["moe_aux"]:
            return (logits,)
        return logits, torch.stack([aux.experts for aux in extra["moe_aux"]], dim=2)


def load_classifier(
    checkpoint: Path, data: Optional[Path] = None, head: Optional[str] = None,
    tokenizer: Optional[Path] = None,
) -> tuple[OMoERobertaModel, ServingInfo]:
    """The fine-tuned model of a fairseq-train checkpoint (eval mode) and what serving it needs.

    checkpoint: a file, or any one shard of an expert-parallel save (`read_model_checkpoint`).
    head: the head to keep; default: the task's (TASK_HEADS, else HEAD).
    data: the binarised data directory it was trained on (input0/dict.txt, label/dict.txt);
    default: the one named in the checkpoint. tokenizer: a tokenizer file (`subword.from_file`);
    default: the one omoe-prepare-data saved in the data directory, else the pretrained
    encoder's WordPiece tokenizer (data prepared before tokenizers were saved used it)."""
    state = read_model_checkpoint(checkpoint)
    cfg = encoder_config(state, checkpoint)
    weights = state["model"]
    task = state["cfg"].get("task") or {}
    head = head or TASK_HEADS.get(task.get("_name"), HEAD)
    out_proj = weights.get(f"classification_heads.{head}.out_proj.weight")
    if out_proj is None:
        raise ValueError(
            f"{checkpoint} has no classification head {head!r}: export a checkpoint written "
            "by fairseq-train (checkpoint_best.pt), not an imported or upcycled encoder"
        )
    data = Path(data or task.get("data") or "")
    if not (data / "input0" / "dict.txt").is_file():
        raise FileNotFoundError(
            f"no dictionary at {data / 'input0' / 'dict.txt'}: pass --data, the binarised data "
            "directory the checkpoint was fine-tuned on"
        )
    dictionary = SentencePredictionTask.load_dictionary(str(data / "input0" / "dict.txt"))
    regression = bool(task.get("regression_target", False))
    pairs = (data / "input1").is_dir()
    span_qa = head == SPAN_HEAD
    if span_qa:
        labels = ["start", "end"]
    else:
        labels = [] if regression else _labels(data, out_proj.size(0))

    model = OMoERobertaModel(cfg, OMoEEncoder(cfg, dictionary))
    tagging = f"classification_heads.{head}.dense.weight" not in weights  # no pooler: per token
    if tagging:
        model.register_token_head(head, out_proj.size(0))
    else:
        model.register_classification_head(head, num_classes=out_proj.size(0))
    others = "classification_heads."
    model_state = {k: v for k, v in weights.items()
                   if not k.startswith(others) or k.startswith(f"{others}{head}.")}
    try:
        model.load_state_dict(model_state)
    except RuntimeError as e:
        raise ValueError(f"{checkpoint} does not match {data}'s dictionary or its own "
                         f"configuration: {' '.join(str(e).split())[:400]}") from None
    tok = from_file(tokenizer) if tokenizer else saved_in(data) or wordpiece_tokenizer()
    info = serving_info(cfg, dictionary, labels, tok, Path(checkpoint).name, pairs,
                        task.get("separator_token") if pairs else None, tagging and not span_qa)
    if span_qa:
        info.span_qa, info.max_answer_tokens = True, task.get("max_answer_tokens", 30)
    return model.eval(), info


def serving_info(cfg: OMoERobertaConfig, dictionary: Dictionary, labels: list[str],
                 tokenizer: SubwordTokenizer, source: str = "", pairs: bool = False,
                 separator: Optional[int] = None, tagging: bool = False) -> ServingInfo:
    """What serving a model of config cfg needs (see ServingInfo)."""
    return ServingInfo(
        labels=labels, symbols=list(dictionary.symbols), tokenizer=tokenizer.to_text(),
        tokenizer_kind=tokenizer.kind, pairs=pairs, separator=separator, tagging=tagging,
        max_positions=cfg.max_positions, bos=dictionary.bos(), eos=dictionary.eos(),
        pad=dictionary.pad(), unk=dictionary.unk(),
        moe_layers=[i for i in range(cfg.encoder_layers) if is_moe_layer(i, cfg.moe_freq)],
        experts=cfg.moe_experts, top_k=cfg.moe_top_k, source=source,
    )


def _labels(data: Path, num_classes: int) -> list[str]:
    """Class names in output order: fairseq's label ids are dictionary ids minus nspecial."""
    path = data / "label" / "dict.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no label dictionary at {path}: pass --data")
    labels = SentencePredictionTask.load_dictionary(str(path))
    return labels.symbols[labels.nspecial:labels.nspecial + num_classes]
