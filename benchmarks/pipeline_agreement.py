"""How near transformers' image-classification pipeline comes to the Predictor's classifier probability.

    python benchmarks/pipeline_agreement.py [--classifier models/classifier] [--json OUT.json]

On the shipped example slices (examples/*.png, and the slices of examples/*.zip), three probabilities
per slice: ``Predictor.classify`` (the classifier alone, slice z-score, temperature), the plain
``pipeline("image-classification", model=...)`` (timm's transform with config.json's fixed mean and
std) and :func:`brainseg.hf_pipeline.classification_pipeline` (brainseg's preprocessing). Prints each
slice, then the largest and mean absolute difference to the Predictor and how many verdicts agree
at the classifier's threshold. The figures in the classifier card come from this script.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def example_slices(root: Path):
    """(name, path or HxWx3 array) of the example PNGs (masks left out) and the example case's slices."""
    from brainseg.case_io import load_case_zip

    out = [(p.stem, str(p)) for p in sorted((root / "examples").glob("*.png")) if not p.stem.endswith("_mask")]
    for z in sorted((root / "examples").glob("*.zip")):
        case = load_case_zip(z)
        out += [(f"{case.name}_{n}", image) for n, image in zip(case.slice_numbers, case.slices)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", default=str(ROOT / "models" / "classifier"), help="folder or Hub repo id")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    from transformers import pipeline

    from brainseg.hf_pipeline import classification_pipeline
    from brainseg.images import load_slice
    from brainseg.inference import Predictor

    slices = example_slices(ROOT)
    predictor = Predictor.from_sources(classifier=args.classifier)
    images = [load_slice(s) if isinstance(s, str) else s for _, s in slices]
    ours = predictor.classify(images)
    plain_pipe = pipeline("image-classification", model=args.classifier)
    exact_pipe = classification_pipeline(args.classifier)
    plain = np.array([plain_pipe(s)[0]["score"] for _, s in slices])
    exact = np.array([exact_pipe(s)[0]["score"] for _, s in slices])
    threshold = predictor.classifier.config.threshold
    print(f"{'slice':<36} {'Predictor':>9} {'pipeline':>9} {'brainseg':>9}")
    for (name, _), a, b, c in zip(slices, ours, plain, exact):
        print(f"{name:<36} {a:9.4f} {b:9.4f} {c:9.4f}")
    report = {"slices": len(slices), "threshold": threshold}
    for key, p in (("pipeline", plain), ("classification_pipeline", exact)):
        diff = np.abs(p - ours)
        report[key] = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                       "same_verdict": int(((p >= threshold) == (ours >= threshold)).sum())}
        print(f"{key}: max |diff| {diff.max():.4f}, mean |diff| {diff.mean():.4f}, same verdict at "
              f"{threshold} on {report[key]['same_verdict']} of {len(slices)} slices")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
