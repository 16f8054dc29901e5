"""`python -m omoe_plugin.analysis.patience DATA [fairseq-train options]`: fairseq-train whose
`--patience` count survives a resume.

fairseq keeps early stopping's state (the best validation score and the validations since
it) in attributes of `fairseq_cli.train.should_stop_early`, which no checkpoint holds: a run
resumed from checkpoint_last.pt counts its patience afresh from its first validation, and
stops later (or, against a worse first score, earlier) than the same run uninterrupted. Here
every checkpoint also holds that state (`extra_state["patience"]`), and resuming restores it,
so a killed and resumed run stops at the same update as an uninterrupted one.
"""

import logging
import sys

logger = logging.getLogger(__name__)
KEY = "patience"


def install() -> None:
    """Make fairseq-train save early stopping's state with every checkpoint and restore it
    when it resumes from one (patches `Trainer.save_checkpoint` and
    `checkpoint_utils.load_checkpoint`, which fairseq_cli.train calls through the module)."""
    from fairseq import checkpoint_utils
    from fairseq.trainer import Trainer
    from fairseq_cli import train

    save, load = Trainer.save_checkpoint, checkpoint_utils.load_checkpoint
    stop = train.should_stop_early

    def save_with_patience(self, filename, extra_state):
        count = {"best": getattr(stop, "best", None), "num_runs": getattr(stop, "num_runs", 0)}
        return save(self, filename, {**extra_state, KEY: count})

    def load_with_patience(cfg, trainer, **kwargs):
        extra_state, epoch_itr = load(cfg, trainer, **kwargs)
        count = (extra_state or {}).get(KEY)
        if count is not None and count["best"] is not None:
            stop.best, stop.num_runs = count["best"], count["num_runs"]
            if 0 < cfg.patience <= count["num_runs"]:  # it had stopped early: nothing to do
                logger.info(f"the run had stopped early ({count['num_runs']} validations "
                            "without improvement): not training further")
                sys.exit(0)
        return extra_state, epoch_itr

    Trainer.save_checkpoint = save_with_patience
    checkpoint_utils.load_checkpoint = load_with_patience


if __name__ == "__main__":
    from fairseq_cli.train import cli_main

    install()
    cli_main()
