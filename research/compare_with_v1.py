"""The cross-validated pipeline against earlier shipped models, on the cases that neither trained on.

    git worktree add /tmp/v1 ffa46f3          # recipe v1's models/ (or any earlier models/ folder)
    python research/compare_with_v1.py --cv runs/cv01 --rules models --old /tmp/v1/models

Each fold's two models, with the rules chosen out of fold (the decisions in ``--rules``'s
``segmenter/config.json`` and ``classifier/config.json``: thresholds, fusion, TTA, the case rule),
predict those of the fold's held-out cases that are in the old models' validation split
(``--old-split``); the old models predict the same cases. Both go through ``brainseg.evaluate``
(the full pipeline, case rule included) in fp32. The old models chose their rules on these cases,
which flatters them.
"""
import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from sklearn.metrics import roc_auc_score

from brainseg.calibrate import cv_runs
from brainseg.data import load_split
from brainseg.evaluate import evaluate
from brainseg.inference import Predictor
from brainseg.metrics import expected_calibration_error


def with_rules(weights_dir: Path, rules_dir: Path, into: Path) -> str:
    """A model folder holding ``weights_dir``'s weights under ``rules_dir``'s config.json."""
    into.mkdir(parents=True)
    shutil.copy(rules_dir / "config.json", into / "config.json")
    (into / "model.safetensors").symlink_to((weights_dir / "model.safetensors").resolve())
    return str(into)


def pooled(results: list) -> dict:
    """Per-case Dice over every case, and detection over every slice, of evaluate() results on disjoint cases."""
    dice = {c: v["dice"] for r in results for c, v in r["per_case"].items()}
    probs = [s["probability"] for r in results for s in r["slices_detail"]]
    labels = [s["label"] for r in results for s in r["slices_detail"]]
    slices = sum(r["slices"] for r in results)
    return {"cases": len(dice), "slices": slices, "dice_per_case_mean": statistics.mean(dice.values()),
            "auroc": roc_auc_score(labels, probs), "ece": expected_calibration_error(probs, labels),
            "accuracy": sum(r["det"]["accuracy"] * r["slices"] for r in results) / slices, "per_case": dice}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cv", required=True, help="the fold runs (segmenter_<f>, classifier_<f>)")
    ap.add_argument("--rules", default="models", help="a models/ folder whose configs hold the chosen rules")
    ap.add_argument("--old", required=True, help="the earlier models/ folder (segmenter/, classifier/)")
    ap.add_argument("--old-split", default="splits/lgg_dev_seed42.json", help="the split the old models trained on")
    ap.add_argument("--data", default="../shared/data/lgg/kaggle_3m")
    args = ap.parse_args(argv)
    rules, old = Path(args.rules), Path(args.old)
    old_val = set(load_split(args.old_split)["val"])
    old_predictor = Predictor.from_sources(str(old / "segmenter"), str(old / "classifier"), precision="fp32")
    new, earlier = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for f, (seg_dir, clf_dir, held) in enumerate(cv_runs(Path(args.cv))):
            common = sorted(set(held) & old_val)
            fold = Predictor.from_sources(with_rules(seg_dir, rules / "segmenter", Path(tmp) / f"s{f}"),
                                          with_rules(clf_dir, rules / "classifier", Path(tmp) / f"c{f}"),
                                          precision="fp32")
            new.append(evaluate(args.data, fold, only=common, keep_slices=True))
            earlier.append(evaluate(args.data, old_predictor, only=common, keep_slices=True))
    a, b = pooled(new), pooled(earlier)
    ahead = sum(a["per_case"][c] > b["per_case"][c] for c in a["per_case"])
    diffs = [a["per_case"][c] - b["per_case"][c] for c in a["per_case"]]
    print(f"{a['cases']} cases neither trained on ({a['slices']} slices): {', '.join(sorted(a['per_case']))}")
    for name, r in (("cross-validated folds", a), (str(old), b)):
        print(f"  {name}: per-case Dice {r['dice_per_case_mean']:.4f}, detection AUROC {r['auroc']:.4f}, "
              f"accuracy {r['accuracy']:.4f}, ECE {r['ece']:.4f}")
    print(f"  the folds ahead on {ahead} of {len(diffs)} cases; difference {statistics.mean(diffs):+.4f} "
          f"(sd over cases {statistics.stdev(diffs) if len(diffs) > 1 else 0.0:.4f})")
    print(json.dumps({"new": a, "old": b}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
