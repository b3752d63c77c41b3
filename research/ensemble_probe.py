"""Does averaging two fold segmenters' pixel probabilities beat each alone? (the fold-ensemble lever of issue 12)

    python research/ensemble_probe.py RUN_A RUN_B [--json OUT]      (runs of the same fold)

Each run alone and the mean of their probabilities, the segmenter alone at pixel threshold 0.5 on the
fold's held-out cases, scored as research/compare_segmenters.py scores (fp32), and the ensemble against
each member and against the members' mean case by case.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_segmenters import evaluate_alone, paired  # noqa: E402

from brainseg.models import ResUNet  # noqa: E402


class MeanOfSegmenters(torch.nn.Module):
    """The members' mean probability, as a logit (what the Predictor expects of a segmenter)."""

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, x):
        p = torch.stack([torch.sigmoid(m(x).float()) for m in self.members]).mean(0)
        return torch.logit(p.clamp(1e-6, 1 - 1e-6))


ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("runs", nargs="+")
ap.add_argument("--data", default="../shared/data/lgg/kaggle_3m")
ap.add_argument("--json")
args = ap.parse_args()
held = json.loads((Path(args.runs[0]) / "split.json").read_text())["val"]
models = [ResUNet.from_pretrained(r) for r in args.runs]
report = {}
for run, model in zip(args.runs, models):
    figures, per_case = evaluate_alone(model, args.data, held)
    report[run] = {"seg": figures, "per_case_dice": per_case}
    print(run, figures, flush=True)
figures, per_case = evaluate_alone(MeanOfSegmenters(models), args.data, held)
members_mean = {c: float(np.mean([report[r]["per_case_dice"][c] for r in args.runs])) for c in held}
report["ensemble"] = {"seg": figures, "per_case_dice": per_case,
                      "against": {r: paired(report[r]["per_case_dice"], per_case) for r in args.runs},
                      "against_members_mean": paired(members_mean, per_case)}
print("ensemble", figures)
for r in args.runs:
    print(f"  against {r}: {report['ensemble']['against'][r]}")
print(f"  against the members' mean: {report['ensemble']['against_members_mean']}")
if args.json:
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
