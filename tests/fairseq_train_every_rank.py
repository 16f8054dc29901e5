"""fairseq-train in which every data-parallel rank writes its checkpoints into its own
--save-dir (fairseq writes them from rank 0 only), so that a test can compare what each rank
holds. Otherwise exactly fairseq-train; `tests.cli.train_data_parallel` launches it."""

from fairseq.trainer import Trainer
from fairseq_cli.train import cli_main

Trainer.should_save_checkpoint_on_current_rank = property(lambda self: True)

if __name__ == "__main__":
    cli_main()
