"""OMoE's settings in one place: the values each option takes and their validation."""

SPACES = ("deltas", "inputs", "centred", "outputs")  # --omoe-space, default first
STATS = ("mean", "pca", "tokens")  # --omoe-stat
MODES = ("joint", "average")  # --omoe-mode
PROJECT = ("update", "gradient")  # --omoe-project
MOMENTS = ("project", "keep")  # --omoe-moment

def option(setting: str) -> str:
    """The command-line option of a setting: max_gain -> --omoe-max-gain."""
    return "--omoe-" + setting.replace("_", "-")


def check_settings(settings: dict) -> None:
    """Raise ValueError naming the option of the first invalid setting."""
    s = settings
    checks = (
        (s["alpha"] > 0, "alpha", "> 0"),
        (s["accumulate_steps"] >= 1, "accumulate_steps", ">= 1"),
        (s["orthogonal_steps"] >= 1, "orthogonal_steps", ">= 1"),
        (s["mode"] in MODES, "mode", "one of " + ", ".join(MODES)),
        (s["project"] in PROJECT, "project", "one of " + ", ".join(PROJECT)),
        (s["stat"] in STATS, "stat", "one of " + ", ".join(STATS)),
        (s["stat_rank"] >= 1, "stat_rank", ">= 1"),
        (s["max_rank"] >= 1, "max_rank", ">= 1"),
        (0.0 <= s["forget"] <= 1.0, "forget", "in [0, 1]"),
        (s["space"] in SPACES, "space", "one of " + ", ".join(SPACES)),
        (s["max_gain"] >= 1.0, "max_gain", ">= 1 (1 = no rescaling)"),
        (s["moment"] in MOMENTS, "moment", "one of " + ", ".join(MOMENTS)),
        (s["orthogonal_lr_scale"] > 0, "orthogonal_lr_scale", "> 0"),
    )
    for ok, name, rule in checks:
        if not ok:
            raise ValueError(f"{option(name)} must be {rule}, got {s[name]!r}")
    if s["space"] == "centred" and s["stat"] == "mean":
        raise ValueError("--omoe-space centred needs --omoe-stat pca or tokens (the mean of "
                         "centred inputs is zero), got stat 'mean'")
