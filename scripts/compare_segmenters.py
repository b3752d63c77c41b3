"""A fold's segmenter against the shipped one, each alone (no classifier gate), on held-out cases.

    python scripts/compare_segmenters.py runs/ablation/segmenter_fold0_128 [--data DIR] [--shipped models/segmenter]

Prints the fold model's per-case figures on all of its held-out cases, then both models on the cases
that neither trained on: the fold's held-out cases that are also in the shipped model's validation split
(``--shipped-split``). A shipped model whose metrics.json says it trained on every case (``val_cases`` 0,
as the v2 models trained on all 88) has none, and the script says so rather than score it on its own
training cases.
"""
import argparse
import json
from pathlib import Path

from brainseg.evaluate import evaluate
from brainseg.inference import Predictor
from brainseg.models import ResUNet


def figures(model, data, cases):
    r = evaluate(data, Predictor(model, None, precision="fp32"), only=cases, progress=False)
    return {k: round(v, 4) for k, v in r["seg"].items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fold_run", help="a train.py --folds output folder (with its split.json)")
    ap.add_argument("--data", default="../shared/data/lgg/kaggle_3m")
    ap.add_argument("--shipped", default="models/segmenter")
    ap.add_argument("--shipped-split", default="splits/lgg_dev_seed42.json",
                    help="the split the shipped model was trained with (its 'val' cases are held out from it)")
    args = ap.parse_args(argv)
    held = json.loads((Path(args.fold_run) / "split.json").read_text())["val"]
    fold = ResUNet.from_pretrained(args.fold_run)
    print(f"{args.fold_run} on its {len(held)} held-out cases: {figures(fold, args.data, held)}")
    metrics = Path(args.shipped) / "metrics.json"
    if metrics.exists() and json.loads(metrics.read_text()).get("val_cases") == 0:
        print(f"{args.shipped} trained on every case (val_cases 0 in its metrics.json): no case is held out from both")
        return 0
    common = sorted(set(held) & set(json.loads(Path(args.shipped_split).read_text())["val"]))
    shipped = ResUNet.from_pretrained(args.shipped)
    print(f"on the {len(common)} cases neither trained on ({', '.join(common)}):")
    for name, model in ((args.fold_run, fold), (args.shipped, shipped)):
        print(f"  {name}: {figures(model, args.data, common)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
