"""The command-line arguments every brainseg command shares, spelled and explained once.

Each command (``brainseg.evaluate``, ``brainseg.predict``, ``brainseg.calibrate``, ``app.py``, the
benchmarks) builds its parser with these, so ``--segmenter``, ``--device``, ``--data`` ... mean the
same everywhere. Nothing here imports torch: a command can check its input before loading it.

Example:
    >>> p = argparse.ArgumentParser()
    >>> add_data_arg(p, "kaggle_3m-layout folder"); add_model_args(p); add_runtime_args(p)
    >>> args = p.parse_args(["--data", "dev", "--segmenter", "user/seg@v1"])
    >>> data_arg(p, args), model_kwargs(args)["segmenter"]
    ('dev', 'user/seg@v1')
"""
import argparse
from typing import Dict, Optional

from .config import PRECISIONS
from .sources import ENV_VARS

KINDS = ("segmenter", "classifier")
MODEL_HELP = "model folder or Hub repo id; user/repo@rev is the shortcut for --{kind}-revision rev"
PRECISION_HELP = "segmenter arithmetic (default: $BRAINSEG_PRECISION, else auto: bf16 where the hardware has it)"


def add_model_args(parser: argparse.ArgumentParser, *, required: bool = False) -> argparse._ArgumentGroup:
    """``--segmenter``/``--classifier`` (sources) and ``--segmenter-revision``/``--classifier-revision``."""
    group = parser.add_argument_group("models")
    for kind in KINDS:
        default = "" if required else f" (default: ${ENV_VARS[kind]}, else the shipped models/{kind})"
        group.add_argument(f"--{kind}", required=required, metavar="SRC",
                           help=f"{kind}: {MODEL_HELP.format(kind=kind)}{default}")
        group.add_argument(f"--{kind}-revision", metavar="REV",
                           help=f"Hub branch, tag or commit of --{kind} (the same as SRC@REV)")
    return group


def add_runtime_args(parser: argparse.ArgumentParser, *, device: bool = True,
                     precision: bool = True) -> argparse._ArgumentGroup:
    """``--device``, ``--precision`` (choices from :data:`brainseg.config.PRECISIONS`) and ``--threads``."""
    group = parser.add_argument_group("runtime")
    if device:
        group.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... (default: cpu)")
    if precision:
        group.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    group.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return group


def add_data_arg(parser: argparse.ArgumentParser, help: str, *, metavar: str = "DATA") -> None:
    """The data folder, positional or as ``--data`` (both spellings work in every command); read it with
    :func:`data_arg`."""
    parser.add_argument("data", nargs="?", metavar=metavar, help=f"{help} (or --data {metavar})")
    parser.add_argument("--data", dest="data_option", metavar=metavar, help=f"the same as the positional {metavar}")


def data_arg(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The data folder given either way; a usage error (exit 2) when it is missing or given twice differently."""
    given = [v for v in (args.data, args.data_option) if v is not None]
    if not given:
        parser.error("the data folder is required: pass it as the first argument or as --data DIR")
    if len(set(given)) > 1:
        parser.error(f"two data folders given: {given[0]} and --data {given[1]}; pass one")
    return given[0]


def model_kwargs(args: argparse.Namespace) -> Dict[str, Optional[str]]:
    """The keywords of :meth:`brainseg.inference.Predictor.from_sources` the model arguments give."""
    out = {kind: getattr(args, kind) for kind in KINDS}
    out.update({f"{kind}_revision": getattr(args, f"{kind}_revision") for kind in KINDS})
    return out


def predictor_from_args(args: argparse.Namespace):
    """A Predictor from the model and runtime arguments (torch is imported here, not before)."""
    from .inference import Predictor

    apply_threads(args)
    return Predictor.from_sources(**model_kwargs(args), device=getattr(args, "device", "cpu"),
                                  precision=getattr(args, "precision", None))


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads from ``--threads`` (0 keeps torch's default)."""
    threads = getattr(args, "threads", 0) or 0
    if threads < 0:
        raise ValueError(f"--threads must be 0 (torch's default) or more, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)


def write_output(path: str, text: str) -> None:
    """Write a command's ``--json`` (or other) output file, making its folder first."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def entry_point(run):
    """``main(argv) -> int`` for a command whose ``run(argv)`` returns its figures: 0 once ``run`` returns
    (argument and data errors leave through argparse with exit status 2 and a message)."""
    def main(argv=None) -> int:
        run(argv)
        return 0

    main.__doc__ = f"Command-line entry point of {run.__module__}: exit code 0 on success."
    return main
