"""OMoE's settings, declared once: each one's default, help, valid values and what changing it
on resume does. The torch optimizer validates them here, fairseq's `--omoe-*` options and the
docs' options table are generated from them, and resume reports changes from them."""

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, NamedTuple, Optional

# what a changed setting does to a resumed run (a change that no longer fits the
# checkpointed state, space, mode or max_rank, is then refused with --reset-optimizer named)
_NEW_CYCLE = ("the phase follows the optimizer's step count with the new cycle, so this run "
              "may switch phase at other updates than the checkpointed run would have")
_NEW_SUMMARY = ("the checkpointed statistics were summarised the old way; new updates fold in "
                "the new kind until the next cycle restarts them")
_NEW_RULE = "orthogonal updates from now on follow the new rule"


class Phase(NamedTuple):
    position: int  # index of the update within its cycle
    accumulating: bool

    @property
    def name(self) -> str:
        return "accumulate" if self.accumulating else "orthogonal"


def setting(default: Any, help: str, on_resume: str, *, choices: tuple[str, ...] = (),
            valid: Optional[Callable[[Any], bool]] = None, rule: str = ""):
    """A settings field: `choices` (the default first) or `valid` with its `rule` in words."""
    if choices:
        valid, rule = (lambda v: v in choices), "one of " + ", ".join(choices)
    return field(default=default, metadata={"help": help, "on_resume": on_resume,
                                            "choices": choices, "valid": valid, "rule": rule})


@dataclass(frozen=True)
class OMoESettings:
    """How OMoE makes expert updates orthogonal and when (the algorithm: docs/algorithm.md).
    Field f is fairseq's `--omoe-f` (underscores as dashes)."""

    space: str = setting(
        "deltas",
        "what an expert's update is made orthogonal to: the other experts' recent update "
        "directions (deltas, AdamW's first moments: needs nothing from the model), their routed "
        "inputs (inputs, OWM), the same centred per expert (centred), or their outputs "
        "(outputs, projected from the left)",
        "the checkpointed statistics and projectors live in the old space",
        choices=("deltas", "inputs", "centred", "outputs"))
    mode: str = setting(
        "joint",
        "other-experts projector: joint = orthogonal to the span of all other experts' "
        "directions; average = the mean of the other experts' projectors",
        "the checkpointed projectors were formed the old way",
        choices=("joint", "average"))
    alpha: float = setting(
        0.01,
        "OWM regulariser: a direction carrying a fraction lambda of the (unit-normalised) "
        "energy keeps alpha/(lambda+alpha) of the update",
        "projectors formed from the next switch on use the new value",
        valid=lambda v: v > 0, rule="> 0")
    accumulate_steps: int = setting(
        10, "updates per cycle with plain AdamW, accumulating statistics", _NEW_CYCLE,
        valid=lambda v: v >= 1, rule=">= 1")
    orthogonal_steps: int = setting(
        10, "updates per cycle with projected expert updates", _NEW_CYCLE,
        valid=lambda v: v >= 1, rule=">= 1")
    project: str = setting(
        "update", "project AdamW's final update (default) or the gradient before AdamW",
        _NEW_RULE, choices=("update", "gradient"))
    moment: str = setting(
        "project",
        "AdamW's first moment in orthogonal updates: project it as the update is projected "
        "(default), or keep it, so that the next accumulating phase replays the removed "
        "component",
        _NEW_RULE, choices=("project", "keep"))
    stat: str = setting(
        "mean",
        "statistics spaces: summary of an update's routed inputs: their mean (OWM), their top "
        "--omoe-stat-rank principal directions, or every routed token",
        _NEW_SUMMARY, choices=("mean", "pca", "tokens"))
    stat_rank: int = setting(
        4, "principal directions per update with --omoe-stat pca", _NEW_SUMMARY,
        valid=lambda v: v >= 1, rule=">= 1")
    max_rank: int = setting(
        16, "statistics spaces: rank kept of each expert's statistics (projector memory)",
        "the checkpointed statistics have the old rank", valid=lambda v: v >= 1, rule=">= 1")
    forget: float = setting(
        0.0,
        "statistics carried into the next cycle, as a forgetting factor in [0, 1]: 0 restarts "
        "them every cycle",
        "the statistics carried over at the next cycle boundary follow the new factor",
        valid=lambda v: 0.0 <= v <= 1.0, rule="in [0, 1]")
    max_gain: float = setting(
        1.0,
        "rescale each projected expert update back towards the norm it had before the "
        "projection, by at most this factor (1 = plain projection)",
        _NEW_RULE, valid=lambda v: v >= 1.0, rule=">= 1 (1 = no rescaling)")
    orthogonal_lr_scale: float = setting(
        1.0,
        "learning rate of the expert weights in orthogonal updates, as a multiple of the "
        "learning rate: the projected update is this many times as long",
        _NEW_RULE, valid=lambda v: v > 0, rule="> 0")

    start: int = setting(
        0,
        "plain AdamW for the first N updates (e.g. the learning-rate warm-up); the "
        "accumulating/orthogonal cycles begin after them",
        _NEW_CYCLE, valid=lambda v: v >= 0, rule=">= 0")
    strength_ramp: int = setting(
        0,
        "the projection's strength, the share of the projected-away part that is removed, "
        "rises linearly to 1 over the first N updates of the cycles (0: full strength from "
        "the first orthogonal update)",
        "the strength follows the optimizer's step count with the new ramp",
        valid=lambda v: v >= 0, rule=">= 0")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["choices"] and not isinstance(value, str):  # fairseq's ChoiceEnum
                value = str(value)
                object.__setattr__(self, f.name, value)
            if not f.metadata["valid"](value):
                raise ValueError(f"{option(f.name)} must be {f.metadata['rule']}, got {value!r}")
        if self.space == "centred" and self.stat == "mean":
            raise ValueError("--omoe-space centred needs --omoe-stat pca or tokens (the mean of "
                             "centred inputs is zero), got stat 'mean'")

    def phase(self, step: int) -> Phase:
        """The phase of the optimizer's step `step` (0 first): after `start` plain updates
        (position -1), cycles of accumulate_steps accumulating updates, then
        orthogonal_steps orthogonal ones."""
        if step < self.start:
            return Phase(-1, True)
        position = (step - self.start) % (self.accumulate_steps + self.orthogonal_steps)
        return Phase(position, position < self.accumulate_steps)

    def strength(self, step: int) -> float:
        """The projection's strength at step `step`: 1, or rising linearly over the first
        strength_ramp updates of the cycles."""
        if self.strength_ramp == 0:
            return 1.0
        return min(1.0, (step - self.start + 1) / self.strength_ramp)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, as checkpoints store them."""
        return asdict(self)


def option(name: str) -> str:
    """The command-line option of a setting: max_gain -> --omoe-max-gain."""
    return "--omoe-" + name.replace("_", "-")


def choices(name: str) -> tuple[str, ...]:
    """The values a choice setting takes, its default first."""
    return next(f.metadata["choices"] for f in fields(OMoESettings) if f.name == name)


def on_resume(name: str) -> str:
    """What changing setting `name` between a checkpoint and its resume does."""
    return next(f.metadata["on_resume"] for f in fields(OMoESettings) if f.name == name)
