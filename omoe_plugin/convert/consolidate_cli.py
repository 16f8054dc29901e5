"""`omoe-consolidate SHARD.pt`: join the checkpoint shards of an expert-parallel save
(`--moe-expert-parallel-size N`) into one whole checkpoint, or cut them for another N."""

import argparse
import logging
import sys
from pathlib import Path

from .checkpoint import write_checkpoints
from .consolidate import parse_shard, read_shards, shard_path, shard_paths


def outputs(out: Path, size: int) -> list[Path]:
    """The files written for `size` expert-parallel ranks: OUT itself for 1."""
    return [out] if size == 1 else [shard_path(out, r, size) for r in range(size)]


def cli_main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="omoe-consolidate",
        description="Join the N checkpoint files an expert-parallel run writes for one save "
        "(NAME-expert{r}of{N}.pt, one per rank) into the whole checkpoint NAME.pt, which "
        "omoe-export and omoe-analyze read and fairseq-train resumes from with "
        "--moe-expert-parallel-size 1; or, with --expert-parallel-size M, into M shards, to "
        "resume with --moe-expert-parallel-size M. Experts, their optimizer state and OMoE's "
        "statistics are joined and cut exactly. Optimizer state that cannot be mapped to the "
        "parameters (a flattened --fp16 state) is left out, with a warning: resume from the "
        "result with --reset-optimizer.")
    parser.add_argument("shard", type=Path, help="any one of the save's shard files")
    parser.add_argument("--out", type=Path, default=None,
                        help="the whole checkpoint to write, or the name the M shards are "
                        "written beside, as OUT-expert{r}of{M}.pt (default: NAME.pt beside "
                        "the shards)")
    parser.add_argument("--expert-parallel-size", type=int, default=1, metavar="M",
                        help="the --moe-expert-parallel-size to resume with (default 1: one "
                        "whole checkpoint)")
    args = parser.parse_args(argv)
    if args.expert_parallel_size < 1:
        parser.error(f"--expert-parallel-size must be >= 1, got {args.expert_parallel_size}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    try:
        inputs = shard_paths(args.shard)
        out = args.out or parse_shard(args.shard)[0]
        files = outputs(out, args.expert_parallel_size)
        clash = {p.resolve() for p in files} & {p.resolve() for p in inputs}
        if clash:
            raise ValueError(f"would overwrite its own input {sorted(clash)[0]}: give --out")
        states = read_shards(args.shard, args.expert_parallel_size)
        write_checkpoints(dict(zip(files, states)))
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.exit(f"omoe-consolidate: {e}")
    for path, state in zip(files, states):
        optimizer = "kept" if state["last_optimizer_state"] is not None else "left out"
        print(f"wrote {path} ({len(inputs)} -> {len(files)} expert-parallel shard(s), "
              f"optimizer state {optimizer})")
