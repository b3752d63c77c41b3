"""The ``python -m brainseg.hub card DIR`` command (``brainseg-card``): a folder's model card and metadata.

The Hub helpers live by concern: :mod:`brainseg.sources` (where models come from, loading),
:mod:`brainseg.cards` (what the card says), :mod:`brainseg.upload` (how it is uploaded).
"""
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Union

from . import cards
from .card_tables import EVAL_GLOB
from .hub_meta import kind_of_config
from .integrity import record_weights_sha256


def infer_kind(model_dir: Union[str, Path]) -> str:
    """'segmenter' or 'classifier', from config.json's ``model_class`` (older folders: metrics.json, fields)."""
    model_dir = Path(model_dir)
    cfg = cards.read_json(model_dir / "config.json") or {}
    task = (cards.read_json(model_dir / "metrics.json") or {}).get("task")
    if "model_class" not in cfg and task in cards.KINDS:
        return task
    try:
        return kind_of_config(cfg, str(model_dir / "config.json"))
    except ValueError:
        raise ValueError(f"Cannot tell whether {model_dir} holds a segmenter or a classifier: pass --kind") from None


def script_commands(path: Union[str, Path]) -> List[str]:
    """A shell script's lines for a card's bash block (shebang and ``set`` lines dropped), headed by its path."""
    keep = [ln.rstrip() for ln in Path(path).read_text().splitlines()
            if ln.strip() and not ln.startswith("#!") and not ln.startswith("set ")]
    return [f"# {path}"] + keep


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m brainseg.hub card DIR [--kind K] [--eval JSON] [--train-command CMD]... [--train-script SH]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m brainseg.hub", description="Write a Hub-format folder's model card "
                                "(README.md) from its config.json, metrics.json and evaluation JSON, and refresh "
                                "config.json's metadata fields (model_class, timm's fields).")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("card", help="write DIR/README.md")
    c.add_argument("model_dir", type=Path)
    c.add_argument("--kind", choices=sorted(cards.KINDS), help="default: from config.json")
    c.add_argument("--eval", type=Path, help=f"evaluation JSON (default: DIR/{EVAL_GLOB} when present)")
    c.add_argument("--train-command", action="append", default=[], help="a command that produced the weights "
                   "(repeat for several stages)")
    c.add_argument("--train-script", type=Path, help="a script holding those commands, shown in the card")
    args = p.parse_args(argv)
    commands = list(args.train_command) + (script_commands(args.train_script) if args.train_script else [])
    try:
        kind = args.kind or infer_kind(args.model_dir)
        from .models import rewrite_config_metadata

        changed = rewrite_config_metadata(args.model_dir)
        record_weights_sha256(args.model_dir)  # the shipped weights' hash, checked at every load
        path = cards.write_model_card(args.model_dir, kind, eval_metrics=args.eval, train_command=commands or None)
    except (FileNotFoundError, ValueError) as e:
        print(f"python -m brainseg.hub card: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({kind})" + (f" and the metadata of {args.model_dir / 'config.json'}" if changed else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
