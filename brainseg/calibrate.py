"""Choose the decision rules on the validation cases and write the shippable checkpoints.

    python -m brainseg.calibrate --data DIR --split splits/lgg_dev_seed42.json \
        --segmenter runs/segmenter --classifier runs/classifier \
        --out-segmenter models/segmenter --out-classifier models/classifier --fp16

- Classifier: temperature scaling (the NLL-optimal temperature on the validation slices), so the
  confidence the app shows means what it says; then the decision threshold with the best
  Youden's J (sensitivity + specificity - 1) on the calibrated probabilities.
- Detection: a logistic fusion of the classifier's logit and the segmenter's evidence (the logit
  of the mean of its top-k pixel probabilities), fitted by maximum likelihood on the validation
  slices (three numbers, so it is calibrated by construction); its threshold by Youden's J too.
  A leave-one-case-out refit is reported beside it, to show how much the fit flatters itself.
- Segmenter: a grid over the pixel threshold, the minimum component size and flip TTA, scored by
  per-case Dice on the validation cases with the masks the Predictor draws: the one rule of
  :func:`brainseg.postprocess.postprocess_mask`, gated by the fused detection verdict (a mask is
  drawn iff the slice is detected, so there is no separate gate to choose). TTA is kept only when
  it gains at least ``--tta-min-gain`` Dice, since it doubles the segmenter's CPU cost.
Only the split's validation cases are used; the chosen values go into each ``config.json``.
"""
import argparse
import itertools
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from safetensors.torch import save_file

from .data import find_cases, load_split, read_image, read_mask, select_cases
from .inference import fuse_detection, segmenter_evidence
from .metrics import CaseDiceAggregator, auroc, detection_metrics, expected_calibration_error
from .models import ResUNet, TumorClassifier
from .postprocess import postprocess_mask
from .preprocess import preprocess

THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7]
MIN_COMPONENTS = [0, 10, 25, 50, 100, 200]


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    return float(np.mean(np.logaddexp(0, z) - labels * z))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the validation NLL (log-spaced grid, then a finer one around the best)."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 241))
    best = grid[np.argmin([nll(logits, labels, t) for t in grid])]
    fine = np.linspace(best / 1.05, best * 1.05, 101)
    return float(fine[np.argmin([nll(logits, labels, t) for t in fine])])


def youden_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The probability threshold with the highest sensitivity + specificity - 1 (ties: closest to 0.5)."""
    cands = np.unique(np.round(probs, 4))
    best, best_t = -1.0, 0.5
    for t in sorted(cands, key=lambda c: abs(c - 0.5)):
        m = detection_metrics(probs, labels, t)
        j = m["sensitivity"] + m["specificity"] - 1
        if j > best + 1e-9:
            best, best_t = j, round(float(t), 4)  # 0.4, not float32's 0.4000000059604645
    return best_t


def fit_fusion(logits: np.ndarray, evidence: np.ndarray, labels: np.ndarray) -> List[float]:
    """Maximum-likelihood ``[w0, w1, b]`` of ``sigmoid(w0 * logits + w1 * evidence + b)`` (L-BFGS)."""
    x = torch.tensor(np.stack([logits, evidence], 1), dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.float64)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w[:2] + w[2], y)
        loss.backward()
        return loss

    opt.step(closure)
    return [float(v) for v in w.detach()]


def leave_one_case_out(logits: np.ndarray, evidence: np.ndarray, labels: np.ndarray, cases: Sequence[str]) -> np.ndarray:
    """Fused probabilities where each case's come from a fit on the other cases only."""
    cases = np.asarray(cases)
    out = np.zeros(len(labels))
    for c in np.unique(cases):
        held = cases == c
        w = fit_fusion(logits[~held], evidence[~held], labels[~held])
        out[held] = fuse_detection(torch.tensor(logits[held]), torch.tensor(evidence[held]), w).numpy()
    return out


@torch.no_grad()
def forward_batches(fn, xs: Sequence[torch.Tensor], batch_size: int = 32) -> torch.Tensor:
    return torch.cat([fn(torch.stack(xs[i:i + batch_size])) for i in range(0, len(xs), batch_size)])


def score_rule(probs: np.ndarray, masks: np.ndarray, cases: List[str], detected: np.ndarray, thr: float,
               min_px: int, model_size: int) -> Dict[str, float]:
    """Per-case metrics of the masks the Predictor would draw: :func:`postprocess_mask` of each slice's
    map (at the masks' size) at this pixel threshold and minimum component size, drawn iff detected."""
    agg = CaseDiceAggregator()
    for p, m, c, d in zip(probs, masks, cases, detected):
        pred = postprocess_mask(p, thr, min_px, model_size, bool(d)).astype(bool)
        agg.update_counts(c, int((pred & m).sum()), int(pred.sum()), int(m.sum()))
    return agg.compute()


def save_checkpoint(model, out: Path, fp16: bool) -> None:
    """save_pretrained, with weights stored as fp16 when asked (loading restores fp32)."""
    model.save_pretrained(out)
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--segmenter", required=True)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--out-segmenter", required=True)
    ap.add_argument("--out-classifier", required=True)
    ap.add_argument("--fp16", action="store_true", help="store weights as fp16 (half the size)")
    ap.add_argument("--tta-min-gain", type=float, default=0.005)
    args = ap.parse_args(argv)

    seg = ResUNet.from_pretrained(args.segmenter)
    clf = TumorClassifier.from_pretrained(args.classifier)
    val_cases = select_cases(find_cases(args.data), load_split(args.split)["val"])
    images, masks, names = [], [], []
    for c in val_cases:
        for ip, mp in zip(c.images, c.masks):
            images.append(read_image(ip))
            masks.append(read_mask(mp))
            names.append(c.name)
    masks_np = np.stack(masks)
    labels = masks_np.reshape(len(masks_np), -1).any(1).astype(np.int64)
    print(f"calibrating on {len(val_cases)} validation cases, {len(images)} slices ({labels.sum()} with tumour)")

    # classifier: temperature, then threshold
    logits = forward_batches(clf, [preprocess(im, clf.config) for im in images])[:, 0].numpy()
    raw = 1 / (1 + np.exp(-logits))
    t = fit_temperature(logits, labels)
    cal = 1 / (1 + np.exp(-logits / t))
    det_thr = youden_threshold(cal, labels)
    clf_report = {"temperature": t, "threshold": det_thr,
                  "ece_before": expected_calibration_error(raw, labels),
                  "ece_after": expected_calibration_error(cal, labels),
                  "nll_before": nll(logits, labels, 1.0), "nll_after": nll(logits, labels, t),
                  "at_threshold": detection_metrics(cal, labels, det_thr),
                  "at_0.5": detection_metrics(cal, labels, 0.5)}
    print("classifier:", json.dumps(clf_report, indent=1))

    # segmenter: probability maps once (plain and flipped), at its input size for the evidence and
    # at the masks' size for the rules
    xs = [preprocess(im, seg.config) for im in images]
    size = masks_np.shape[1:]
    top_k = clf.config.fusion_top_k
    plain = forward_batches(lambda x: torch.sigmoid(seg(x)), xs, 16)
    flipped = forward_batches(lambda x: torch.sigmoid(seg(x.flip(-1))).flip(-1), xs, 16)
    variants = {}
    for tta in (False, True):
        p = 0.5 * (plain + flipped) if tta else plain
        evidence = segmenter_evidence(p[:, 0], top_k).numpy()
        weights = fit_fusion(logits, evidence, labels)
        fused = fuse_detection(torch.tensor(logits), torch.tensor(evidence), weights).numpy()
        thr = youden_threshold(fused, labels)
        loco = leave_one_case_out(logits, evidence, labels, names)
        at_full = torch.nn.functional.interpolate(p, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
        variants[tta] = {"probs": at_full, "det": fused, "fusion": {
            "weights": weights, "top_k": top_k, "threshold": thr,
            "auroc_segmenter_evidence_alone": auroc(evidence, labels),
            "ece": expected_calibration_error(fused, labels),
            "nll": nll(weights[0] * logits + weights[1] * evidence + weights[2], labels, 1.0),
            "at_threshold": detection_metrics(fused, labels, thr),
            "at_0.5": detection_metrics(fused, labels, 0.5),
            "leave_one_case_out_auroc": auroc(loco, labels),
            "leave_one_case_out_at_threshold": detection_metrics(loco, labels, thr)}}
    del plain, flipped, p
    grid = []
    masks_bool = masks_np.astype(bool)
    for tta, thr, min_px in itertools.product([False, True], THRESHOLDS, MIN_COMPONENTS):
        v = variants[tta]
        detected = v["det"] >= v["fusion"]["threshold"]
        grid.append({"tta_flip": tta, "threshold": thr, "min_component_px": min_px,
                     **score_rule(v["probs"], masks_bool, names, detected, thr, min_px, seg.config.image_size)})
    key = "dice_per_case_mean"
    best_plain = max((g for g in grid if not g["tta_flip"]), key=lambda g: g[key])
    best_tta = max((g for g in grid if g["tta_flip"]), key=lambda g: g[key])
    chosen = best_tta if best_tta[key] >= best_plain[key] + args.tta_min_gain else best_plain
    default = next(g for g in grid if not g["tta_flip"] and g["threshold"] == 0.5 and g["min_component_px"] == 0)
    seg_report = {"chosen": chosen, "best_without_tta": best_plain, "best_with_tta": best_tta,
                  "defaults": default, "grid_size": len(grid)}
    print("segmenter:", json.dumps(seg_report, indent=1))
    fusion = variants[chosen["tta_flip"]]["fusion"]
    clf_report["fusion"] = fusion
    print("detection (fused):", json.dumps(fusion, indent=1))

    # write the shippable checkpoints
    clf.config.temperature, clf.config.threshold = t, det_thr
    clf.config.fusion_weights, clf.config.fusion_threshold = fusion["weights"], fusion["threshold"]
    for k in ("tta_flip", "threshold", "min_component_px"):
        setattr(seg.config, k, chosen[k])
    seg.config.gate_threshold = 0.0  # no longer a separate rule: the detection verdict gates the mask
    for model, src, out, report in ((seg, args.segmenter, args.out_segmenter, seg_report),
                                    (clf, args.classifier, args.out_classifier, clf_report)):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, out, args.fp16)
        for extra in ("curves.png",):
            if (Path(src) / extra).exists():
                shutil.copy(Path(src) / extra, out / extra)
        src_metrics = Path(src) / "metrics.json"
        metrics = json.loads(src_metrics.read_text()) if src_metrics.exists() else {}
        metrics["calibration"] = report
        metrics["model_config"] = asdict(model.config)
        metrics["weights_dtype"] = "float16" if args.fp16 else "float32"
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {"classifier": clf_report, "segmenter": seg_report}


if __name__ == "__main__":
    main()
