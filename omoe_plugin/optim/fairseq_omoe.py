"""`--optimizer omoe`: the fairseq shell of the OMoE optimizer (`omoe.OMoE`). Its `--omoe-*`
options are generated from `settings.OMoESettings`, where each is declared once."""

import ast
from dataclasses import field, fields, make_dataclass
from typing import Any, List

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II

from .omoe import OMoE
from .settings import OMoESettings


def _option(name: str, kind: Any, default: Any, help: str) -> tuple:
    return name, kind, field(default=default, metadata={"help": help})


OMoEConfig = make_dataclass("OMoEConfig", [
    _option("omoe_betas", Any, (0.9, 0.999), "AdamW betas"),
    _option("omoe_eps", float, 1e-8, "AdamW epsilon"),
    _option("weight_decay", float, 0.0, "decoupled weight decay"),
    *(_option("omoe_" + f.name,
              ChoiceEnum(f.metadata["choices"]) if f.metadata["choices"] else f.type,
              f.default, f.metadata["help"]) for f in fields(OMoESettings)),
    ("lr", List[float], field(default=II("optimization.lr"))),
], bases=(FairseqDataclass,))
OMoEConfig.__module__ = __name__


@register_optimizer("omoe", dataclass=OMoEConfig)
class FairseqOMoE(FairseqOptimizer):
    def __init__(self, cfg: OMoEConfig, params) -> None:
        super().__init__(cfg)
        betas = cfg.omoe_betas
        betas = ast.literal_eval(betas) if isinstance(betas, str) else tuple(betas)
        self._optimizer = OMoE(params, **self.optimizer_config, betas=betas,
                               **{f.name: getattr(cfg, "omoe_" + f.name)
                                  for f in fields(OMoESettings)})

    @property
    def optimizer_config(self) -> dict:
        """The hyper-parameters that a checkpoint's --optimizer-overrides may change."""
        return {
            "lr": self.cfg.lr[0],
            "eps": self.cfg.omoe_eps,
            "weight_decay": self.cfg.weight_decay,
        }
