"""Out-of-fold per-case Dice by tumour volume (2026-12-06; not in brainseg).

    python research/by_volume_probe.py docs/ablations/postprocess/v3_oof.json [--rule "threshold 0.3"] [--data DIR]
    python research/by_volume_probe.py docs/ablations/dark_interior.json --model dark_interior

Reads the per-case Dice of a post-processing probe's JSON (``research/postprocess_probe.py --json``, or a
results file holding one under ``oof_probe``, ``--model`` naming the entry where it compares several), counts each case's tumour voxels in its masks, and prints the mean
and median Dice, and the cases under 0.6, per quartile of tumour volume. Which tumours the mean loses on
decides which lever to try: the loss's weighting of small tumours, or the interiors of large ones.
"""
import argparse
import json

import numpy as np

from brainseg.data import find_cases, read_mask

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("probe_json")
ap.add_argument("--rule", default="threshold 0.3")
ap.add_argument("--model", help="the per-case entry to read where a file holds several models' figures")
ap.add_argument("--data", default="../shared/data/lgg/kaggle_3m")
args = ap.parse_args()
probe = json.load(open(args.probe_json))
per_case = probe.get("oof_probe", probe)["per_case"]
cases = {c.name: c for c in find_cases(args.data)}
names = sorted(per_case)
dice = np.array([(per_case[n][args.model] if args.model else per_case[n])[args.rule] for n in names])
volume = np.array([sum(int((read_mask(p) > 0).sum()) for p in cases[n].masks) for n in names])
print(f"{len(names)} cases, {args.model or args.probe_json}, {args.rule}: per-case Dice {dice.mean():.3f}")
print("| tumour voxels (at 256x256) | cases | per-case Dice mean | median | cases < 0.6 |\n|---|---|---|---|---|")
for q in np.array_split(np.argsort(volume), 4):
    print(f"| {volume[q].min():,}-{volume[q].max():,} | {len(q)} | {dice[q].mean():.3f} | {np.median(dice[q]):.3f} "
          f"| {(dice[q] < 0.6).sum()} |")
