"""What resuming OMoE from a checkpoint checks: which settings changed and what that does,
and that the checkpointed state fits this model and is finite (a checkpoint is untrusted
input: a corrupt or foreign one must not plant a bad projector)."""

import logging
from typing import Optional

import torch

from .settings import on_resume, option

logger = logging.getLogger(__name__)


def report_changed_settings(settings: dict, saved: Optional[dict]) -> None:
    """Say, on resume, which settings differ from the checkpoint's and what that does."""
    if saved is None:
        logger.warning("the checkpoint's OMoE state predates stored settings: a change of "
                       "--omoe-* options since it was saved cannot be detected")
        return
    # older checkpoints: --omoe-project's setting was project_what, and --omoe-moment's the
    # flag project_moment
    saved = {("project" if k == "project_what" else k): v for k, v in saved.items()}
    if "project_moment" in saved:
        saved["moment"] = "project" if saved.pop("project_moment") else "keep"
    for name, value in settings.items():
        if name in saved and saved[name] != value:
            logger.warning(f"{option(name)} changed since the checkpoint ({saved[name]!r} -> "
                           f"{value!r}): {on_resume(name)}")


def check_loaded_state(omoe: Optional[dict], stats: dict, stat_steps: dict, mode: str,
                       workers: int = 1) -> None:
    """Refuse checkpointed OMoE state (`OMoE.state_dict()["omoe"]`) that is missing, does not
    fit this optimizer's statistics (`stats`, `stat_steps`: key -> tensor, of this worker's
    share of the experts when they are sharded over `workers`) and projector `mode`, or is
    not finite."""
    fresh = "resume with --reset-optimizer to start the statistics afresh"
    if omoe is None:
        raise ValueError("this optimizer state has no OMoE statistics (was it saved by another "
                         f"optimizer?); {fresh}")
    if set(omoe["stats"]) != set(stats):
        raise ValueError(f"OMoE state has statistics for expert weights {sorted(omoe['stats'])}, "
                         f"this model and --omoe-space need {sorted(stats)}; {fresh}")
    expected = {"stats": stats, "stat_steps": stat_steps}
    for part in ("stats", "stat_steps", "factors"):
        for key, value in omoe[part].items():
            if not isinstance(value, torch.Tensor) or key not in stats:
                fits = False
            elif part == "factors":  # what expert_factors returns for this mode and rank
                E, dim, r = stats[key].shape
                E *= workers  # every expert's factors
                width = 0 if E == 1 else r if mode == "average" else (E - 1) * r
                fits = value.shape == (E, dim, width)
            else:
                fits = value.shape == expected[part][key].shape
            if not fits or not torch.isfinite(value).all():
                problem = ("does not fit the model, --omoe-space, --omoe-mode and "
                           "--omoe-max-rank" if not fits else "is not finite")
                raise ValueError(f"the checkpoint's OMoE {part} for expert weight {key} "
                                 f"{problem}; {fresh}")
