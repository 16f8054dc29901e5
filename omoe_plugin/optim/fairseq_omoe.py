"""`--optimizer omoe`: the fairseq options of the OMoE optimizer (`omoe.OMoE`)."""

import ast
from dataclasses import dataclass, field
from typing import Any, List

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II

from .omoe import OMoE
from .settings import MODES, MOMENTS, PROJECT, SPACES, STATS


@dataclass
class OMoEConfig(FairseqDataclass):
    omoe_betas: Any = field(default=(0.9, 0.999), metadata={"help": "AdamW betas"})
    omoe_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay"})
    omoe_alpha: float = field(
        default=0.01,
        metadata={
            "help": "OWM regulariser: a direction carrying a fraction lambda of the "
            "(unit-normalised) energy keeps alpha/(lambda+alpha) of the update"
        },
    )
    omoe_accumulate_steps: int = field(
        default=10, metadata={"help": "updates per cycle with plain AdamW, accumulating statistics"}
    )
    omoe_orthogonal_steps: int = field(
        default=10, metadata={"help": "updates per cycle with projected expert updates"}
    )
    omoe_mode: ChoiceEnum(MODES) = field(
        default=MODES[0],
        metadata={
            "help": "other-experts projector: joint = orthogonal to the span of all other "
            "experts' directions; average = the mean of the other experts' projectors"
        },
    )
    omoe_project: ChoiceEnum(PROJECT) = field(
        default=PROJECT[0],
        metadata={"help": "project AdamW's final update (default) or the gradient before AdamW"},
    )
    omoe_stat: ChoiceEnum(STATS) = field(
        default=STATS[0],
        metadata={
            "help": "summary of an update's routed inputs: their mean (OWM), their top "
            "--omoe-stat-rank principal directions, or every routed token"
        },
    )
    omoe_stat_rank: int = field(
        default=4, metadata={"help": "principal directions per update with --omoe-stat pca"}
    )
    omoe_max_rank: int = field(
        default=16,
        metadata={"help": "rank kept of each expert's statistics (projector memory)"},
    )
    omoe_space: ChoiceEnum(SPACES) = field(
        default=SPACES[0],
        metadata={
            "help": "what an expert's update is made orthogonal to: the other experts' recent "
            "update directions (deltas), their routed inputs (inputs, OWM), the same centred "
            "per expert (centred), or their outputs (outputs, projected from the left)"
        },
    )
    omoe_max_gain: float = field(
        default=1.0,
        metadata={
            "help": "rescale each projected expert update back towards the norm it had before "
            "the projection, by at most this factor (1 = plain projection)"
        },
    )
    omoe_moment: ChoiceEnum(MOMENTS) = field(
        default=MOMENTS[0],
        metadata={
            "help": "AdamW's first moment in orthogonal updates: project it as the update is "
            "projected (default), or keep it, so that the next accumulating phase replays "
            "the removed component"
        },
    )
    omoe_orthogonal_lr_scale: float = field(
        default=1.0,
        metadata={
            "help": "learning rate of the expert weights in orthogonal updates, as a multiple of "
            "--lr: the projected update is this many times as long"
        },
    )
    omoe_forget: float = field(
        default=0.0,
        metadata={
            "help": "statistics carried into the next cycle, as a forgetting factor in [0, 1]: "
            "0 restarts them every cycle"
        },
    )
    lr: List[float] = II("optimization.lr")


@register_optimizer("omoe", dataclass=OMoEConfig)
class FairseqOMoE(FairseqOptimizer):
    def __init__(self, cfg: OMoEConfig, params) -> None:
        super().__init__(cfg)
        betas = cfg.omoe_betas
        betas = ast.literal_eval(betas) if isinstance(betas, str) else tuple(betas)
        settings = ("alpha", "accumulate_steps", "orthogonal_steps", "mode", "project", "stat",
                    "stat_rank", "max_rank", "forget", "space", "max_gain", "moment",
                    "orthogonal_lr_scale")
        self._optimizer = OMoE(params, **self.optimizer_config, betas=betas,
                               **{name: getattr(cfg, "omoe_" + name) for name in settings})

    @property
    def optimizer_config(self) -> dict:
        """The hyper-parameters that a checkpoint's --optimizer-overrides may change."""
        return {
            "lr": self.cfg.lr[0],
            "eps": self.cfg.omoe_eps,
            "weight_decay": self.cfg.weight_decay,
        }
