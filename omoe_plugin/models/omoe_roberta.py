"""The `omoe_roberta` model: an MoE encoder with RoBERTa's sentence classification heads, or a
per-token tagging head (BERT's token classification: dropout and one linear layer)."""

import logging
import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import (
    FairseqEncoderModel,
    register_model,
    register_model_architecture,
)
from fairseq.models.roberta.model import RobertaClassificationHead
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from fairseq.utils import get_available_activation_fns, safe_getattr
from omegaconf import II

from ..moe import StackedExperts
from .encoder import OMoEEncoder, expert_ffn_dim
from .expert_parallel import build_expert_parallel, ignore_in_data_parallel, shard_whole_experts
from .mismatch import CheckpointMismatch, mismatch

logger = logging.getLogger(__name__)

ACTIVATION_CHOICES = ChoiceEnum(get_available_activation_fns())
TOKEN_HEAD = "token_tags"  # the per-token head --task omoe_token_classification registers
SPAN_HEAD = "answer_span"  # --task omoe_span_qa's per-token head: start and end logits


@dataclass
class OMoERobertaConfig(FairseqDataclass):
    encoder_layers: int = field(default=12, metadata={"help": "number of encoder layers"})
    encoder_embed_dim: int = field(default=768, metadata={"help": "embedding dimension"})
    encoder_ffn_embed_dim: int = field(
        default=3072,
        metadata={"help": "hidden dimension of each dense FFN (and of each expert by default)"},
    )
    encoder_attention_heads: int = field(default=12, metadata={"help": "attention heads"})
    activation_fn: ACTIVATION_CHOICES = field(
        default="gelu", metadata={"help": "activation of the FFNs and experts"}
    )
    pooler_activation_fn: ACTIVATION_CHOICES = field(
        default="tanh", metadata={"help": "activation of the classification head"}
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    attention_dropout: float = field(
        default=0.1, metadata={"help": "dropout probability of attention weights"}
    )
    activation_dropout: float = field(
        default=0.0, metadata={"help": "dropout probability after the FFN activation"}
    )
    pooler_dropout: float = field(
        default=0.0, metadata={"help": "dropout probability in the classification head"}
    )
    layer_norm_eps: float = field(
        default=1e-5, metadata={"help": "LayerNorm epsilon (BERT checkpoints use 1e-12)"}
    )
    moe_experts: int = field(default=4, metadata={"help": "experts per MoE layer"})
    moe_top_k: int = field(default=1, metadata={"help": "experts each token is routed to"})
    moe_expert_ffn_dim: int = field(
        default=0,
        metadata={
            "help": "hidden dimension of each expert (0 = --encoder-ffn-embed-dim); a `split` "
            "upcycled checkpoint needs the value omoe-upcycle printed"
        },
    )
    moe_freq: int = field(
        default=1,
        metadata={
            "help": "every n-th encoder layer is an MoE layer (1 = all, 2 = every other "
            "one, 0 = none: the dense encoder)"
        },
    )
    moe_expert_parallel_size: int = field(
        default=1,
        metadata={
            "help": "workers each MoE layer's experts are split over (expert parallelism: "
            "each holds experts/N of them, tokens travel to their expert's worker and back); "
            "the world size must be a multiple of it. Checkpoints are then one file per "
            "expert-parallel rank (omoe-consolidate joins them)"
        },
    )
    max_positions: int = II("task.max_positions")


class TokenClassificationHead(nn.Module):
    """features [B, T, C] -> tag logits [B, T, num_tags]."""

    def __init__(self, input_dim: int, num_tags: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.out_proj = nn.Linear(input_dim, num_tags)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(features))


class ExpertParamCount(logging.Filter):
    """fairseq-train logs "num. expert model params" counting the tensors tagged with fairseq's
    own `expert`, a tag that also takes them out of gradient clipping and the data-parallel
    all-reduce (fairseq's expert parallelism). Our experts are shared by every worker and
    clipped with the rest, so they carry this package's tags instead, and this filter on
    fairseq-train's logger writes the expert and the other ("shared") counts into its lines."""

    def __init__(self) -> None:
        super().__init__()
        self.model: Optional[weakref.ref] = None  # the model built last: the one being trained
        logging.getLogger("fairseq_cli.train").addFilter(self)

    def track(self, model: nn.Module) -> None:
        self.model = weakref.ref(model)

    def filter(self, record: logging.LogRecord) -> bool:
        model = self.model() if self.model else None
        kind = next((k for k in ("shared", "expert") if isinstance(record.msg, str)
                     and record.msg.startswith(f"num. {k} model params")), None)
        if model is not None and kind is not None:  # counted now: the task's heads included
            experts = {id(p) for m in model.modules() if isinstance(m, StackedExperts)
                       for p in m.parameters()}
            params = [p for p in model.parameters() if (id(p) in experts) == (kind == "expert")]
            record.msg, record.args = (
                f"num. {kind} model params: {sum(p.numel() for p in params):,} (num. trained: "
                f"{sum(p.numel() for p in params if p.requires_grad):,})"), ()
        return True


EXPERT_COUNT = ExpertParamCount()


@register_model("omoe_roberta", dataclass=OMoERobertaConfig)
class OMoERobertaModel(FairseqEncoderModel):
    """Sentence classifier on an :class:`OMoEEncoder`, head-compatible with fairseq's RoBERTa.

    forward returns (logits or features, extra) where extra["moe_aux"] holds one
    :class:`~omoe_plugin.moe.MoEAux` per MoE layer for the criterion.
    """

    def __init__(self, cfg: OMoERobertaConfig, encoder: OMoEEncoder) -> None:
        super().__init__(encoder)
        self.cfg = cfg
        self.apply(init_bert_params)  # Linear/Embedding; the stacked experts init themselves
        self.classification_heads = nn.ModuleDict()

    @classmethod
    def build_model(cls, cfg: OMoERobertaConfig, task) -> "OMoERobertaModel":
        validate_config(cfg)
        if safe_getattr(cfg, "moe_expert_parallel_size", 1) > 1:
            from ..tasks.schedule import OMoESchedule  # here: the tasks import this module

            if not isinstance(task, OMoESchedule):
                raise ValueError("--moe-expert-parallel-size needs one of this package's tasks "
                                 "(--task omoe_sentence_prediction, omoe_token_classification, "
                                 "omoe_span_qa): they reduce the sharded experts' gradients")
        parallel = build_expert_parallel(cfg)
        model = cls(cfg, OMoEEncoder(cfg, task.source_dictionary, parallel))
        if parallel is not None:
            ignore_in_data_parallel(model)
        EXPERT_COUNT.track(model)
        return model

    def forward(
        self,
        src_tokens: torch.Tensor,
        classification_head_name: Optional[str] = None,
        return_all_hiddens: bool = False,
        **unused,
    ):
        """src_tokens: [B, T]. With classification_head_name the first output is the
        head's logits ([B, num_classes], a token head's [B, T, num_tags]), otherwise the
        features [B, T, C]. (There is no
        LM head: fairseq's `features_only` flag is accepted and has nothing to switch.)"""
        x, extra = self.encoder(src_tokens, return_all_hiddens=return_all_hiddens)
        if classification_head_name is not None:
            x = self.classification_heads[classification_head_name](x)
        return x, extra

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """fairseq's, but a checkpoint that does not fit stops fairseq-train (and
        fairseq-validate), which pass model_cfg, with one line naming the tensor, its shapes and
        the option that fixes it: their trainer would replace a CheckpointMismatch, like any
        Exception, with "please ensure that the architectures match"."""
        try:
            return super().load_state_dict(state_dict, strict, model_cfg, args)
        except RuntimeError as e:  # torch's: missing or unexpected tensors, other shapes
            problem = mismatch(self.state_dict(), state_dict)  # state_dict as upgraded
            if problem is None:
                raise
            if model_cfg is None:
                raise CheckpointMismatch(problem) from e
            raise SystemExit(f"cannot load the checkpoint: {problem}") from None

    def upgrade_state_dict_named(self, state_dict: dict, name: str) -> None:
        """A checkpoint without the current classification heads (an imported or upcycled
        encoder, read by --finetune-from-model) keeps the freshly initialised heads."""
        super().upgrade_state_dict_named(state_dict, name)
        prefix = f"{name}." if name else ""
        shard_whole_experts(self, state_dict, prefix)
        for key, value in self.classification_heads.state_dict().items():
            if state_dict.setdefault(f"{prefix}classification_heads.{key}", value) is value:
                logger.info(f"initialising classification_heads.{key} (not in the checkpoint)")

    def register_classification_head(
        self, name: str, num_classes: int, inner_dim: Optional[int] = None, **unused
    ) -> None:
        """Add a RoBERTa classification head (on the first token's features)."""
        self._warn_if_resized(name, num_classes)
        dim = self.cfg.encoder_embed_dim
        self.classification_heads[name] = RobertaClassificationHead(
            input_dim=dim,
            inner_dim=inner_dim or dim,
            num_classes=num_classes,
            activation_fn=self.cfg.pooler_activation_fn,
            pooler_dropout=self.cfg.pooler_dropout,
        )
        self.classification_heads[name].apply(init_bert_params)

    def register_token_head(self, name: str, num_tags: int) -> None:
        """Add a per-token tagging head (on every position's features)."""
        self._warn_if_resized(name, num_tags)
        self.classification_heads[name] = TokenClassificationHead(
            self.cfg.encoder_embed_dim, num_tags, self.cfg.dropout
        )
        self.classification_heads[name].apply(init_bert_params)

    def _warn_if_resized(self, name: str, num_classes: int) -> None:
        if name in self.classification_heads:
            prev = self.classification_heads[name].out_proj.out_features
            if num_classes != prev:
                logger.warning(
                    f're-registering head "{name}" with num_classes {num_classes} '
                    f"(prev: {prev})"
                )


def validate_config(cfg: OMoERobertaConfig) -> None:
    """Stop early, naming the option, on a layer pattern that cannot build a model.

    Expert count and top-k are checked where they are used, by the router."""
    if cfg.moe_freq < 0:
        raise ValueError(f"--moe-freq must be >= 0 (0 = no MoE layer), got {cfg.moe_freq}")
    if expert_ffn_dim(cfg) < 0:
        raise ValueError(
            f"--moe-expert-ffn-dim must be >= 0 (0 = --encoder-ffn-embed-dim), got "
            f"{cfg.moe_expert_ffn_dim}"
        )
    if cfg.moe_freq > cfg.encoder_layers:
        raise ValueError(
            f"--moe-freq {cfg.moe_freq} leaves no MoE layer in a {cfg.encoder_layers}-layer "
            "encoder; use --moe-freq 0 for a dense model"
        )


def _set_shape(args, layers: int, dim: int, ffn: int, heads: int) -> None:
    """Fill the shape options the user did not give (fairseq's architecture convention)."""
    args.encoder_layers = safe_getattr(args, "encoder_layers", layers)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", dim)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", ffn)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", heads)


@register_model_architecture("omoe_roberta", "omoe_roberta_base")
def omoe_roberta_base(args) -> None:
    """BERT-base shapes: 12 layers, 768 hidden, 3072 FFN, 12 heads."""
    _set_shape(args, layers=12, dim=768, ffn=3072, heads=12)


@register_model_architecture("omoe_roberta", "omoe_roberta_minilm")
def omoe_roberta_minilm(args) -> None:
    """all-MiniLM-L6-v2 shapes: 6 layers, 384 hidden, 1536 FFN, 12 heads."""
    _set_shape(args, layers=6, dim=384, ffn=1536, heads=12)


@register_model_architecture("omoe_roberta", "omoe_roberta_tiny")
def omoe_roberta_tiny(args) -> None:
    """For tests and smoke runs: 2 layers, 64 hidden, 128 FFN, 4 heads."""
    _set_shape(args, layers=2, dim=64, ffn=128, heads=4)
