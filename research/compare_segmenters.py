"""Fold segmenters against each other and against the shipped one, each alone (no classifier gate), on held-out cases.

    python research/compare_segmenters.py RUN [RUN ...] [--data DIR] [--shipped models/segmenter] [--json OUT]

Prints each fold run's per-case figures on all of its held-out cases. With several runs of the same fold
(an ablation), each later run is also compared with the first case by case: the mean and sd over cases of
the difference in per-case Dice, and on how many cases it is ahead, since on ~22 cases a mean alone
does not say whether a recipe is better. ``--json`` keeps every run's per-case Dice (small enough to commit,
where ``runs/`` may not outlive the machine); ``--against FILE.json:NAME`` compares with such a kept run
instead of the first, when its folder is gone.

Then the first run and the shipped model on the cases that neither trained on: the fold's held-out cases
that are also in the shipped model's validation split (``--shipped-split``). A shipped model whose
metrics.json says it trained on every case (``val_cases`` 0, as the v2 models trained on all 88) has
none, and the script says so rather than score it on its own training cases.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from brainseg.evaluate import evaluate
from brainseg.inference import Predictor
from brainseg.models import ResUNet


def evaluate_alone(model, data, cases):
    """(the segmentation figures, rounded; the per-case Dice) of ``model`` alone on ``cases``."""
    r = evaluate(data, Predictor(model, None, precision="fp32"), only=cases, progress=False)
    return {k: round(v, 4) for k, v in r["seg"].items()}, {c: v["dice"] for c, v in r["per_case"].items()}


def paired(first: dict, other: dict) -> dict:
    """``other`` minus ``first`` in per-case Dice over their cases: mean, sd over cases, cases ahead / behind."""
    d = np.array([other[c] - first[c] for c in first])
    return {"cases": len(d), "mean": round(float(d.mean()), 4), "sd": round(float(d.std(ddof=1)), 4),
            "ahead": int((d > 0).sum()), "behind": int((d < 0).sum())}


def kept_per_case(spec: str) -> dict:
    """The per-case Dice of the run NAME in FILE.json (``FILE.json:NAME``), as ``--json`` writes it or under "results"."""
    path, _, name = spec.rpartition(":")
    kept = json.loads(Path(path).read_text())
    return kept.get("results", kept)[name]["per_case_dice"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fold_runs", nargs="+", metavar="RUN", help="train.py --folds output folders (with their split.json)")
    ap.add_argument("--data", default="../shared/data/lgg/kaggle_3m")
    ap.add_argument("--shipped", default="models/segmenter")
    ap.add_argument("--shipped-split", default="splits/lgg_dev_seed42.json",
                    help="the split the shipped model was trained with (its 'val' cases are held out from it)")
    ap.add_argument("--json", help="write every run's figures and per-case Dice here")
    ap.add_argument("--against", metavar="FILE.json:NAME",
                    help="compare each run with NAME's per-case Dice kept in FILE.json (a --json output or docs/ablations)")
    args = ap.parse_args(argv)
    helds = [json.loads((Path(run) / "split.json").read_text())["val"] for run in args.fold_runs]
    if any(sorted(h) != sorted(helds[0]) for h in helds):
        ap.error("the runs hold out different cases: compare runs of the same fold")
    held, report = helds[0], {}
    kept = kept_per_case(args.against) if args.against else None  # the same for every run: read and checked once
    if kept and sorted(kept) != sorted(held):
        ap.error(f"{args.against} holds other cases than the runs' held-out ones")
    first = ResUNet.from_pretrained(args.fold_runs[0])  # also scored below, against the shipped model
    for run in args.fold_runs:
        model = first if run == args.fold_runs[0] else ResUNet.from_pretrained(run)
        figures, per_case = evaluate_alone(model, args.data, held)
        report[run] = {"seg": figures, "per_case_dice": per_case}
        print(f"{run} on its {len(held)} held-out cases: {figures}")
        if run != args.fold_runs[0]:
            report[run]["against_first"] = paired(report[args.fold_runs[0]]["per_case_dice"], per_case)
            print(f"  against {args.fold_runs[0]}, per-case Dice: {report[run]['against_first']}")
        if kept:
            report[run]["against_kept"] = {"run": args.against, **paired(kept, per_case)}
            print(f"  against {args.against}, per-case Dice: {report[run]['against_kept']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")

    metrics = Path(args.shipped) / "metrics.json"
    if metrics.exists() and json.loads(metrics.read_text()).get("val_cases") == 0:
        print(f"{args.shipped} trained on every case (val_cases 0 in its metrics.json): no case is held out from both")
        return 0
    common = sorted(set(held) & set(json.loads(Path(args.shipped_split).read_text())["val"]))
    print(f"on the {len(common)} cases neither trained on ({', '.join(common)}):")
    for name, model in ((args.fold_runs[0], first), (args.shipped, ResUNet.from_pretrained(args.shipped))):
        print(f"  {name}: {evaluate_alone(model, args.data, common)[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
