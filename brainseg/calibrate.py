"""Choose the decision rules on held-out cases and write the shippable checkpoints.

    python -m brainseg.calibrate --data DIR --cv runs/cv \
        --segmenter runs/segmenter --classifier runs/classifier --out models --fp16 --json models/segmenter/eval_oof.json
    python -m brainseg.calibrate --data DIR --split SPLIT.json --segmenter ... --classifier ... --out OUT
    python -m brainseg.calibrate --rules models/rules.json --segmenter ... --classifier ... --out OUT

With ``--cv DIR`` (folders ``segmenter_<f>`` and ``classifier_<f>``, each with the ``split.json`` its
training wrote) every fold's models predict that fold's validation cases, and all choices below are
made on the pooled out-of-fold predictions: every case of the folds, not the ~17 of one split. The
chosen values are then written into ``--segmenter`` / ``--classifier``, the same recipe trained on
all cases. With ``--split`` the one split's validation cases are used, as before.

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
- Cases: 3-D connected components across a case's slices (:mod:`brainseg.volume`): keep all, the
  largest only, or those of at least N voxels, scored by per-case Dice and detection accuracy with the
  chosen pixel rule; one is applied (by :meth:`Predictor.predict_case`) only if it lowers neither and
  their summed gain is at least ``--case-rule-min-gain``.
The chosen values go into each ``config.json`` (``OUT/segmenter``, ``OUT/classifier``); the figures and their
spread over folds into metrics.json; the values with their held-out figures into ``OUT/rules.json``, which
``--rules`` writes into new checkpoints without choosing again (the fold runs need not exist).
"""
import argparse
import itertools
import json
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from .cli import (KINDS, add_data_arg, add_model_args, add_runtime_args, apply_threads, data_arg, entry_point,
                  write_output)
from .data import find_cases, load_split, read_image, read_mask, select_cases
from .evaluate import evaluation_record, to_json
from .decision import classifier_probability, draw_mask, fuse_detection, is_detected, segmenter_evidence, upsample
from .inference import Predictor
from .metrics import CaseDiceAggregator, auroc, detection_metrics, expected_calibration_error
from .models import ResUNet, TumorClassifier
from .sources import model_folder
from .volume import apply_case_rule

THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7]
MIN_COMPONENTS = [0, 10, 25, 50, 100, 200]
RULE_FIELDS = {"segmenter": ("tta_flip", "threshold", "min_component_px", "case_rule", "case_min_voxels"),
               "classifier": ("temperature", "threshold", "fusion_weights", "fusion_threshold")}
CASE_RULES = [("none", 0), ("largest", 0)] + [("min_voxels", n) for n in (25, 50, 100, 250, 500)]  # voxels at the model's size


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
    """Maximum-likelihood ``[w0, w1, b]`` of ``sigmoid(w0 * logits + w1 * evidence + b)`` (unpenalised
    logistic regression, scikit-learn)."""
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(np.stack([logits, evidence], 1), np.asarray(labels))
    return [float(fit.coef_[0, 0]), float(fit.coef_[0, 1]), float(fit.intercept_[0])]


def leave_one_case_out(logits: np.ndarray, evidence: np.ndarray, labels: np.ndarray, cases: Sequence[str]) -> np.ndarray:
    """Fused probabilities where each case's come from a fit on the other cases only."""
    cases = np.asarray(cases)
    out = np.zeros(len(labels))
    for c in np.unique(cases):
        held = cases == c
        w = fit_fusion(logits[~held], evidence[~held], labels[~held])
        out[held] = fuse_detection(torch.tensor(logits[held]), torch.tensor(evidence[held]), w).numpy()
    return out


def rule_aggregator(probs: np.ndarray, masks: np.ndarray, cases: List[str], detected: np.ndarray, thr: float,
                    min_px: int, model_size: int) -> CaseDiceAggregator:
    """Per-case counts of the masks the Predictor would draw (:func:`brainseg.decision.draw_mask`) at this pixel
    threshold and minimum component size, drawn iff detected."""
    return case_rule_aggregator(probs, masks, cases, detected, thr, min_px, model_size)[0]


def score_rule(probs: np.ndarray, masks: np.ndarray, cases: List[str], detected: np.ndarray, thr: float,
               min_px: int, model_size: int) -> Dict[str, float]:
    """Per-case metrics of :func:`rule_aggregator`."""
    return rule_aggregator(probs, masks, cases, detected, thr, min_px, model_size).compute()


def case_rule_aggregator(probs: np.ndarray, masks: np.ndarray, cases: List[str], detected: np.ndarray, thr: float,
                         min_px: int, model_size: int, rule: str = "none", min_voxels: int = 0
                         ) -> Tuple[CaseDiceAggregator, np.ndarray]:
    """Per-case counts of the masks the Predictor would draw for a case: :func:`brainseg.decision.draw_mask` of
    each slice's map (at the masks' size) with these rules, then the 3-D case rule as
    :meth:`Predictor.predict_case` applies it (:func:`brainseg.volume.apply_case_rule`); also the slices'
    verdicts after the rule. ``detected`` holds the slices' verdicts at the detection threshold."""
    cases = np.asarray(cases)
    drawn = np.stack([draw_mask(p, bool(d), p.shape, thr, min_px, model_size) for p, d in zip(probs, detected)])
    agg, verdicts = CaseDiceAggregator(), np.asarray(detected, bool).copy()
    for c in dict.fromkeys(cases):
        idx = np.flatnonzero(cases == c)
        pred, removed = apply_case_rule(drawn[idx], rule, min_voxels, model_size)
        verdicts[idx] &= ~removed
        for p, m in zip(pred.astype(bool), masks[idx]):
            agg.update_counts(c, int((p & m).sum()), int(p.sum()), int(m.sum()))
    return agg, verdicts


def score_case_rules(probs: np.ndarray, masks: np.ndarray, cases: List[str], detected: np.ndarray, thr: float,
                     min_px: int, model_size: int) -> List[Dict]:
    """Per-case metrics and detection accuracy of each 3-D rule of :data:`CASE_RULES` on the Predictor's masks."""
    labels = masks.any(axis=(1, 2))
    out = []
    for rule, n in CASE_RULES:
        agg, verdicts = case_rule_aggregator(probs, masks, cases, detected, thr, min_px, model_size, rule, n)
        out.append({"case_rule": rule, "min_voxels": n, **agg.compute(),
                    "detection_accuracy": float((verdicts == labels).mean()),
                    "detection_sensitivity": float(verdicts[labels].mean()) if labels.any() else float("nan"),
                    "detection_specificity": float((~verdicts[~labels]).mean()) if (~labels).any() else float("nan")})
    return out


def choose_case_rule(scored: Sequence[Dict], min_gain: float) -> Dict:
    """The 3-D rule that gains the most per-case Dice plus detection accuracy over applying none, if that
    gain is at least ``min_gain`` and neither figure falls; else none. A rule's whole point may be the false
    alarms it removes (v3 out of fold: "largest" +0.004 Dice, +0.007 accuracy), so Dice alone undersells it."""
    none = next(r for r in scored if r["case_rule"] == "none")

    def gains(r):
        return (r["dice_per_case_mean"] - none["dice_per_case_mean"],
                r["detection_accuracy"] - none["detection_accuracy"])

    eligible = [r for r in scored if min(gains(r)) >= 0 and sum(gains(r)) >= min_gain]
    return max(eligible, key=lambda r: sum(gains(r)), default=none)


def fold_summary(per_case: Dict[str, Dict[str, float]], folds: Dict[str, int]) -> Dict[str, float]:
    """Mean and sd over folds of the per-fold mean per-case Dice (as the published k-fold figures are)."""
    by_fold: Dict[int, List[float]] = {}
    for case, m in per_case.items():
        by_fold.setdefault(folds[case], []).append(m["dice"])
    means = [float(np.mean(v)) for _, v in sorted(by_fold.items())]
    return {"folds": len(means), "dice_per_case_mean_by_fold": means,
            "dice_per_case_mean_over_folds": float(np.mean(means)),
            "dice_per_case_sd_over_folds": float(np.std(means, ddof=1)) if len(means) > 1 else float("nan")}


def cv_runs(cv_dir: Path) -> List[Tuple[Path, Path, List[str]]]:
    """(segmenter dir, classifier dir, validation case names) of each fold under ``cv_dir``."""
    runs = []
    for seg_dir in sorted(cv_dir.glob("segmenter_*")):
        clf_dir = cv_dir / seg_dir.name.replace("segmenter_", "classifier_")
        for d in (seg_dir, clf_dir):
            if not (d / "model.safetensors").exists():
                raise FileNotFoundError(f"Fold checkpoint missing: {d} (has its training finished?)")
        runs.append((seg_dir, clf_dir, load_split(seg_dir / "split.json")["val"]))
    if not runs:
        raise FileNotFoundError(f"No fold folders segmenter_<f> in {cv_dir}")
    seen = [n for _, _, val in runs for n in val]
    if len(seen) != len(set(seen)):
        raise ValueError(f"The folds in {cv_dir} validate some case twice: their splits are not one k-fold")
    return runs


def held_out_predictions(data: str, runs: Sequence[Tuple[str, str, Sequence[str]]], batch_size: int = 16,
                         device: str = "cpu") -> Dict:
    """Each run's models, through a :class:`Predictor` in fp32, on its own held-out cases, pooled: the masks,
    case names, fold index, classifier logits (before temperature) and the segmenter's plain and flipped
    pixel probabilities at its input size, (N, S, S)."""
    all_cases = find_cases(data)
    out = {k: [] for k in ("masks", "names", "fold", "logits", "plain", "flipped")}
    predictor = None
    for f, (seg_dir, clf_dir, val) in enumerate(runs):
        predictor = Predictor(ResUNet.from_pretrained(seg_dir), TumorClassifier.from_pretrained(clf_dir),
                              device=device, precision="fp32")
        images = []
        for c in select_cases(all_cases, val):
            images += [read_image(ip) for ip in c.images]
            out["masks"] += [read_mask(mp) for mp in c.masks]
            out["names"] += [c.name] * len(c)
            out["fold"] += [f] * len(c)
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            out["logits"].append(predictor.classifier_logits(chunk))
            plain, flipped = predictor.segment_passes(chunk)
            out["plain"].append(plain)
            out["flipped"].append(flipped)
        print(f"fold {f}: {len(val)} held-out cases, {len(images)} slices ({seg_dir}, {clf_dir})", flush=True)
    for k in ("logits", "plain", "flipped"):
        out[k] = torch.cat(out[k])
    out["logits"] = out["logits"].numpy()
    out["masks"] = np.stack(out["masks"])
    out["top_k"], out["model_size"] = predictor.classifier.config.fusion_top_k, predictor.seg_cfg.image_size
    return out


def save_checkpoint(model, out: Path, fp16: bool) -> None:
    """save_pretrained, with weights stored as fp16 when asked (loading restores fp32)."""
    model.save_pretrained(out)
    if fp16:
        model.save_weights(out / "model.safetensors", torch.float16)


def calibrate(argv=None) -> Dict:
    """Parse ``argv``, choose, write the checkpoints; returns the report (what :func:`main` prints)."""
    ap = argparse.ArgumentParser(prog="python -m brainseg.calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(ap, "kaggle_3m-layout folder")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", help="choose on this split's validation cases, with --segmenter/--classifier")
    src.add_argument("--cv", help="choose on the out-of-fold predictions of the fold runs in this folder")
    src.add_argument("--rules", help="choose nothing: write the rules of this OUT/rules.json of an earlier run")
    add_model_args(ap, required=True)
    add_runtime_args(ap, precision=False)  # fp32 always: the rules are chosen on the models' exact outputs
    ap.add_argument("--out", required=True, help="output folder: OUT/segmenter and OUT/classifier (the checkpoints "
                    "with the chosen rules) and OUT/rules.json (the rules with their held-out figures)")
    ap.add_argument("--fp16", action="store_true", help="store weights as fp16 (half the size)")
    ap.add_argument("--tta-min-gain", type=float, default=0.005,
                    help="keep flip TTA only if it gains at least this per-case Dice (it doubles the segmenter's cost)")
    ap.add_argument("--case-rule-min-gain", type=float, default=0.005,
                    help="apply a 3-D case rule only if per-case Dice plus detection accuracy gain at least "
                    "this over none, neither falling")
    ap.add_argument("--json", dest="json_out", help="also write the held-out figures of the chosen rules here, in "
                    "brainseg.evaluate's layout (e.g. models/segmenter/eval_oof.json for the cards)")
    args = ap.parse_args(argv)
    try:
        return _calibrate(ap, args)
    except (FileNotFoundError, KeyError, ValueError, OSError) as e:
        ap.error(str(e.args[0]) if e.args else str(e))  # exit status 2, the message (naming the path) on stderr


def _calibrate(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Dict:
    args.data = data_arg(ap, args) if not args.rules else None
    apply_threads(args)
    out = Path(args.out)
    args.out_segmenter, args.out_classifier = out / "segmenter", out / "classifier"
    for kind in KINDS:  # the checkpoints the choices are written into, as folders (a Hub repo is fetched)
        setattr(args, kind, str(model_folder(getattr(args, kind), getattr(args, f"{kind}_revision"))))

    if args.rules:
        return apply_recorded_rules(args, ResUNet.from_pretrained(args.segmenter),
                                    TumorClassifier.from_pretrained(args.classifier))
    runs = cv_runs(Path(args.cv)) if args.cv else [
        (args.segmenter, args.classifier, load_split(args.split)["val"])]
    held = held_out_predictions(args.data, runs, device=args.device)
    seg = ResUNet.from_pretrained(args.segmenter)  # the checkpoints the choices are written into
    clf = TumorClassifier.from_pretrained(args.classifier)
    masks_np, names, logits = held["masks"], held["names"], held["logits"]
    labels = masks_np.any(axis=(1, 2)).astype(np.int64)
    n_cases = len(set(names))
    source = (f"out-of-fold predictions of {len(runs)} fold{'' if len(runs) == 1 else 's'} ({args.cv})" if args.cv
              else f"{args.split} validation")
    print(f"calibrating on {n_cases} held-out cases, {len(names)} slices ({labels.sum()} with tumour): {source}")

    # classifier: temperature, then threshold
    raw = classifier_probability(logits, 1.0)
    t = fit_temperature(logits, labels)
    cal = classifier_probability(logits, t)
    det_thr = youden_threshold(cal, labels)
    clf_report = {"temperature": t, "threshold": det_thr,
                  "ece_before": expected_calibration_error(raw, labels),
                  "ece_after": expected_calibration_error(cal, labels),
                  "nll_before": nll(logits, labels, 1.0), "nll_after": nll(logits, labels, t),
                  "at_threshold": detection_metrics(cal, labels, det_thr),
                  "at_0.5": detection_metrics(cal, labels, 0.5)}
    print("classifier:", json.dumps(clf_report, indent=1))

    # segmenter: probability maps (plain and flipped) at its input size for the evidence and at the
    # masks' size for the rules
    size = masks_np.shape[1:]
    top_k, model_size = held["top_k"], held["model_size"]
    plain, flipped = held.pop("plain"), held.pop("flipped")
    variants = {}
    for tta in (False, True):
        p = Predictor.combine_passes(plain, flipped, tta)
        evidence = segmenter_evidence(p, top_k).numpy()
        weights = fit_fusion(logits, evidence, labels)
        fused = fuse_detection(torch.tensor(logits), torch.tensor(evidence), weights).numpy()
        thr = youden_threshold(fused, labels)
        loco = leave_one_case_out(logits, evidence, labels, names)
        variants[tta] = {"probs": upsample(p, size), "det": fused, "fusion": {
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
        detected = is_detected(v["det"], v["fusion"]["threshold"])
        grid.append({"tta_flip": tta, "threshold": thr, "min_component_px": min_px,
                     **score_rule(v["probs"], masks_bool, names, detected, thr, min_px, model_size)})
    key = "dice_per_case_mean"
    best_plain = max((g for g in grid if not g["tta_flip"]), key=lambda g: g[key])
    best_tta = max((g for g in grid if g["tta_flip"]), key=lambda g: g[key])
    chosen = best_tta if best_tta[key] >= best_plain[key] + args.tta_min_gain else best_plain
    default = next(g for g in grid if not g["tta_flip"] and g["threshold"] == 0.5 and g["min_component_px"] == 0)
    v = variants[chosen["tta_flip"]]
    detected = is_detected(v["det"], v["fusion"]["threshold"])
    rule = (v["probs"], masks_bool, names, detected, chosen["threshold"], chosen["min_component_px"], model_size)
    case_rules = score_case_rules(*rule)
    case_rule = choose_case_rule(case_rules, args.case_rule_min_gain)
    seg_report = {"chosen_on": source, "cases": n_cases, "slices": len(names),
                  "chosen": chosen, "best_without_tta": best_plain, "best_with_tta": best_tta,
                  "defaults": default, "grid_size": len(grid), "case_rules": case_rules,
                  "case_rule_chosen": case_rule}
    chosen_agg, verdicts = case_rule_aggregator(*rule, case_rule["case_rule"], case_rule["min_voxels"])
    if args.cv:
        seg_report["cross_validation"] = fold_summary(chosen_agg.per_case(), dict(zip(names, held["fold"])))
    # seconds_per_slice None: these predictions were not timed
    evaluation = evaluation_record(chosen_agg, Counter(names), v["det"], labels, v["fusion"]["threshold"],
                                   chosen["threshold"], verdicts, seconds_per_slice=None, sources=source,
                                   precision="fp32", data_dir=args.data, split=source, case_rule=case_rule["case_rule"],
                                   cross_validation=seg_report.get("cross_validation"))
    if args.json_out:
        write_output(args.json_out, to_json(evaluation))
    print("segmenter:", json.dumps(seg_report, indent=1))
    fusion = v["fusion"]
    clf_report["chosen_on"] = source
    clf_report["fusion"] = fusion
    print("detection (fused):", json.dumps(fusion, indent=1))

    values = {"segmenter": dict(chosen, case_rule=case_rule["case_rule"], case_min_voxels=case_rule["min_voxels"]),
              "classifier": {"temperature": t, "threshold": det_thr, "fusion_weights": fusion["weights"],
                             "fusion_threshold": fusion["threshold"]}}
    rules = {"chosen_on": source, **{kind: {k: values[kind][k] for k in RULE_FIELDS[kind]} for kind in RULE_FIELDS}}
    # the figures without the per-case table: a record to read, small enough to commit
    record = {k: x for k, x in evaluation.items() if k != "per_case"}
    record["det_classifier_alone"] = {"auroc": auroc(cal, labels), "ece": clf_report["ece_after"]}
    write_output(str(Path(args.out) / "rules.json"), to_json(dict(rules, held_out=record)))
    write_checkpoints(args, seg, clf, rules, seg_report, clf_report)
    return {"classifier": clf_report, "segmenter": seg_report}


def read_rules(path: str) -> Dict:
    """A ``rules.json`` that calibrate wrote, checked: the rule fields of both configs, and where they were chosen."""
    try:
        rules = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable rules file ({e})") from e
    if not isinstance(rules, dict):
        raise ValueError(f"{path}: not a rules.json of brainseg.calibrate (not a JSON object)")
    missing = [f"{kind}.{k}" for kind, keys in RULE_FIELDS.items() for k in keys if k not in rules.get(kind, {})]
    if missing or "chosen_on" not in rules:
        raise ValueError(f"{path}: not a rules.json of brainseg.calibrate "
                         f"(missing {', '.join(missing or ['chosen_on'])})")
    return rules


def apply_recorded_rules(args, seg, clf) -> Dict:
    """``--rules FILE``: write rules chosen earlier (and recorded with their held-out figures) into the
    checkpoints, choosing nothing; for when the fold runs they were chosen on are gone."""
    rules = read_rules(args.rules)
    held = rules.get("held_out")
    if args.json_out and not held:
        raise ValueError(f"{args.rules}: no held-out figures recorded (no 'held_out'), so there is nothing "
                         f"for --json {args.json_out}; leave --json out to apply the rules alone")
    seg_report = {"chosen_on": rules["chosen_on"], "rules_file": args.rules, **rules["segmenter"]}
    alone = (held or {}).get("det_classifier_alone") or {}
    clf_report = {"chosen_on": rules["chosen_on"], "rules_file": args.rules,
                  "temperature": rules["classifier"]["temperature"], "threshold": rules["classifier"]["threshold"],
                  "fusion": {"weights": rules["classifier"]["fusion_weights"],
                             "threshold": rules["classifier"]["fusion_threshold"]},
                  **({"ece_after": alone["ece"], "at_threshold": {"auroc": alone["auroc"],
                                                                  "threshold": rules["classifier"]["threshold"]}}
                     if alone else {})}
    print(f"applying the rules of {args.rules}, chosen on {rules['chosen_on']}")
    write_output(str(Path(args.out) / "rules.json"), to_json(rules))  # OUT holds the rules it was written with
    if args.json_out and held:
        write_output(args.json_out, to_json(dict(held, recorded_in=args.rules)))
    write_checkpoints(args, seg, clf, rules, seg_report, clf_report)
    return {"classifier": clf_report, "segmenter": seg_report}


def write_checkpoints(args, seg, clf, rules: Dict, seg_report: Dict, clf_report: Dict) -> None:
    """The chosen rules into both configs, then the shippable folders: weights, curves, metrics.json."""
    for model, kind in ((seg, "segmenter"), (clf, "classifier")):
        for k in RULE_FIELDS[kind]:
            setattr(model.config, k, rules[kind][k])
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


main = entry_point(calibrate)


if __name__ == "__main__":
    raise SystemExit(main())
