"""Post-processing the segmenter's own masks could add, out of fold (2026-12-04; not in brainseg).

    python research/postprocess_probe.py [--cv runs/cv] [--data DIR] [--json OUT]

Each fold's segmenter alone (no classifier: a slice is drawn when its peak probability is >= 0.5) on its
held-out cases; per-case Dice of: the pixel threshold 0.3 with components under 25 px dropped (what
calibrate chose for v3), thresholds under and over it, 2-D hole filling of that mask, closing then hole
filling (added later the same day), and hysteresis (regions at p >= low kept where they hold a pixel >= high).
Last row (2026-12-06): the threshold 0.3 mask drawn on exactly the slices whose truth holds tumour, an
oracle gate: what a perfect detector could add to the segmenter.
The worst cases are large tumours whose dark cystic or necrotic interior the annotators included and the
model leaves out; these rules test whether the probabilities already hold that interior.
"""
import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import scipy.ndimage as ndi
import torch

from brainseg.data import find_cases, load_split, read_image, read_mask
from brainseg.inference import Predictor
from brainseg.models import ResUNet
from brainseg.postprocess import postprocess_mask, remove_small_components


def hysteresis(prob, low, high, min_px=25):
    n, labels = cv2.connectedComponents((prob >= low).astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[np.unique(labels[prob >= high])] = True
    keep[0] = False
    return remove_small_components(keep[labels].astype(np.uint8), min_px)


def closed(mask, radius):
    """Morphological closing with a disk of ``radius`` px (at the mask's size), then 2-D hole filling: an open
    crescent around a dark interior becomes a filled region if its gap is under about 2 * radius."""
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return ndi.binary_fill_holes(cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, disk))


RULES = {f"threshold {t}": (lambda p, t=t: postprocess_mask(p, t, 25, 128)) for t in (0.1, 0.2, 0.25, 0.3, 0.4, 0.5)}
RULES["threshold 0.3 + fill holes"] = lambda p: ndi.binary_fill_holes(postprocess_mask(p, 0.3, 25, 128))
RULES.update({f"threshold 0.3 + closing {r} px + fill holes": (lambda p, r=r: closed(postprocess_mask(p, 0.3, 25, 128), r))
              for r in (6, 12)})
RULES.update({f"hysteresis {lo} / {hi}": (lambda p, lo=lo, hi=hi: hysteresis(p, lo, hi)) for lo, hi in ((0.2, 0.5), (0.1, 0.5))})
ORACLE = "threshold 0.3, oracle gate (drawn on the truth's tumour slices)"


def case_mask(rule, probs, drawn):
    """A case's masks: ``rule`` on the slices drawn, nothing on the others."""
    return np.stack([rule(p) if d else np.zeros(p.shape, np.uint8) for p, d in zip(probs, drawn)]).astype(bool)


def dice(pred, truth):
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)


ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--cv", default="runs/cv")
ap.add_argument("--data", default="../shared/data/lgg/kaggle_3m")
ap.add_argument("--json")
args = ap.parse_args()
torch.set_num_threads(1)
cases = {c.name: c for c in find_cases(args.data)}
per_case = {}
for seg_dir in sorted(Path(args.cv).glob("segmenter_*")):
    predictor = Predictor(ResUNet.from_pretrained(str(seg_dir)), None, precision="fp32")
    for name in load_split(seg_dir / "split.json")["val"]:
        images = [read_image(p) for p in cases[name].images]
        truth = np.stack([read_mask(p) for p in cases[name].masks]).astype(bool)
        probs = torch.nn.functional.interpolate(predictor.segment_probs(images)[:, None], size=truth.shape[1:],
                                                mode="bilinear", align_corners=False)[:, 0].numpy()
        drawn = probs.reshape(len(probs), -1).max(1) >= 0.5
        per_case[name] = {rule: dice(case_mask(fn, probs, drawn), truth) for rule, fn in RULES.items()}
        per_case[name][ORACLE] = dice(case_mask(RULES["threshold 0.3"], probs, truth.any((1, 2))), truth)
base = np.array([v["threshold 0.3"] for v in per_case.values()])
summary = {}
for rule in [*RULES, ORACLE]:
    x = np.array([v[rule] for v in per_case.values()])
    summary[rule] = {"dice_per_case_mean": round(float(x.mean()), 4), "against_0.3": round(float((x - base).mean()), 4),
                     "ahead": int((x > base + 1e-9).sum()), "behind": int((x < base - 1e-9).sum())}
    print(rule, summary[rule])
if args.json:
    Path(args.json).write_text(json.dumps({"cases": len(per_case), "cv": args.cv, "summary": summary,
                                           "per_case": per_case}, indent=1) + "\n")
