"""Pretrained dense checkpoints into fairseq, and dense -> MoE upcycling."""
