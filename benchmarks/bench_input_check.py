"""The input check's benchmark: what it says about real held-out slices and about what users bring.

    python benchmarks/bench_input_check.py --data ../shared/data/lgg/kaggle_3m [--fold 0] [--every 4] [--json out.json]

In-distribution: the slices of fold ``--fold`` of ``splits/lgg_dev_4fold_seed42.json``, scored by a check
fitted on the other three folds (distances, channel regressions; thresholds chosen without this fold's
scores: :func:`brainseg.fit_input_check.fold_checks`) and, with ``--net`` / ``--single-net``, the input
CNN and the single-channel CNN trained on the other folds only (trained and saved there when the files do
not exist yet). Out of distribution, built from what is at hand (no downloads), from every ``--every``-th
slice of that fold: channel permutations, single channels, inverted contrast, sagittal/coronal reslices
of its volumes, rotations and flips, heavy noise and blur, procedural phantoms, matplotlib's
``sample_data`` images, blank and gradient images.

Also printed: how often a reordered or single channel changed the models' answer, and how often it did
so without a warning; whole cases in each channel order; per-case Dice and detection with and without the
refusals (the shipped models, which saw every dev case: in-sample), the "uncertain - review" marks against
the errors (in-sample too), FLAIR-only accuracy, and the check's latency over a bare ``Predictor.predict``.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brainseg.data import find_cases, read_image, read_mask  # noqa: E402
from brainseg.fit_input_check import DevStats, collect, fold_checks  # noqa: E402
from brainseg.input_check import InputCheckConfig  # noqa: E402
from brainseg.input_stats import slice_stats  # noqa: E402
from brainseg.inference import Predictor  # noqa: E402
from brainseg.metrics import CaseDiceAggregator, detection_metrics, dice_score  # noqa: E402

TARGETS = {"real": "<= 1 % warned, <= 0.2 % refused", "non-brain": "100 % refused",
           "phantom": "100 % refused", "permuted": ">= 95 % warned or refused",
           "single non-FLAIR": ">= 95 % warned or refused", "inverted": ">= 95 % warned or refused"}


def phantom(rng: np.random.Generator) -> np.ndarray:
    """A grey ellipse with a bright blob, 3 channels (the issue's phantom), at a seed the input CNN never drew."""
    im = np.zeros((256, 256, 3), np.float32)
    cv2.ellipse(im, (128, 128), (int(rng.integers(70, 110)), int(rng.integers(80, 120))), 0, 0, 360,
                tuple(float(v) for v in rng.integers(60, 140, 3)), -1)
    cv2.circle(im, tuple(int(v) for v in rng.integers(90, 160, 2)), int(rng.integers(10, 30)),
               tuple(float(v) for v in rng.integers(150, 255, 3)), -1)
    return np.clip(im + rng.normal(0, 5, im.shape) * (im > 0), 0, 255).astype(np.uint8)


def matplotlib_images():
    """The pictures that ship inside matplotlib (``mpl-data/sample_data``), as RGB arrays, with crops and
    resizes so the group is not three images."""
    import matplotlib
    from PIL import Image

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    out = []
    for name in ("logo2.png", "grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        a = np.asarray(Image.open(folder / name).convert("RGB"))
        h, w = a.shape[:2]
        out += [a, a[: h // 2], a[:, : w // 2], cv2.resize(a, (256, 256)), a[h // 4:, w // 4:], np.ascontiguousarray(a[:, ::-1])]
    return out


def groups(fold_images, volumes, rng):
    """name -> (list of images, kind for the targets)."""
    ims = fold_images
    g = {}
    for perm in [(1, 0, 2), (0, 2, 1), (2, 1, 0), (1, 2, 0), (2, 0, 1)]:
        g[f"permuted {perm}"] = ([np.ascontiguousarray(im[..., list(perm)]) for im in ims], "permuted")
    g["single pre-contrast"] = ([im[..., 0] for im in ims], "single non-FLAIR")
    g["single post-contrast"] = ([im[..., 2] for im in ims], "single non-FLAIR")
    g["single FLAIR (legit)"] = ([im[..., 1] for im in ims], "real-like")
    g["inverted"] = ([255 - im for im in ims], "inverted")
    g["sagittal reslice"] = ([cv2.resize(np.ascontiguousarray(v[:, :, j]), (256, 256)) for v in volumes
                              for j in range(64, 200, 24)], "reslice")
    g["coronal reslice"] = ([cv2.resize(np.ascontiguousarray(v[:, j, :]), (256, 256)) for v in volumes
                             for j in range(64, 200, 24)], "reslice")
    # what a volume read along the wrong axis gives: one row of the image per axial slice, not resampled
    g["sagittal, as read"] = ([np.ascontiguousarray(v[:, :, j]) for v in volumes for j in range(64, 200, 24)], "reslice")
    g["coronal, as read"] = ([np.ascontiguousarray(v[:, j, :]) for v in volumes for j in range(64, 200, 24)], "reslice")
    g["rotated 90"] = ([np.ascontiguousarray(np.rot90(im)) for im in ims], "rotated")
    g["rotated 180"] = ([np.ascontiguousarray(np.rot90(im, 2)) for im in ims], "rotated")
    g["flipped up-down"] = ([np.ascontiguousarray(im[::-1]) for im in ims], "rotated")
    g["heavy noise"] = ([np.clip(im + rng.normal(0, 60, im.shape), 0, 255).astype(np.uint8) for im in ims], "degraded")
    g["heavy blur"] = ([cv2.GaussianBlur(im, (0, 0), 6) for im in ims], "degraded")
    g["phantom"] = ([phantom(rng) for _ in range(60)], "phantom")
    g["matplotlib sample_data"] = (matplotlib_images(), "non-brain")
    g["blank / gradient"] = ([np.zeros((256, 256, 3), np.uint8), np.full((256, 256, 3), 255, np.uint8)]
                             + [(np.linspace(0, 255, 256)[None, :, None] * np.ones((256, 1, 3)) * s).astype(np.uint8)
                                for s in (0.3, 0.6, 1.0)]
                             + [(np.add.outer(np.linspace(0, 1, 256), np.linspace(0, 1, 256))[..., None]
                                 * np.array([60, 120, 200])).astype(np.uint8)], "non-brain")
    return g


def statuses(check, predictor, images):
    out = []
    for start in range(0, len(images), 32):
        chunk = [np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im for im in images[start:start + 32]]
        feats = predictor.classifier_features(chunk)
        out += [check.check(im, feats[i]) for i, im in enumerate(chunk)]
    return out


def answers(check, predictor, images):
    """The Predictor's answers with ``check`` as its input check: (status, detected, mask) a slice."""
    predictor.input_check = check
    return [(p.input_check["status"], p.detected, p.mask) for p in predictor.predict_batch(images, prob_maps=False)]


def changed(a, b) -> bool:
    """Whether answer ``b`` differs from ``a`` (the same slice in the models' order): another verdict, or
    outlines that overlap under Dice 0.5."""
    if bool(a[1]) != bool(b[1]):
        return True
    return bool(a[1]) and dice_score(b[2], a[2]) < 0.5


def rates(results):
    s = [r.status for r in results]
    n = max(len(s), 1)
    return {"n": len(s), "ok": s.count("ok") / n, "warn": s.count("warn") / n, "refuse": s.count("refuse") / n}


def latency(predictor, check, sample) -> None:
    """Print the check's share of a bare ``Predictor.predict`` on ``sample``, and where its time goes."""
    inside = []  # the check's own time in each checked call (Predictor.check_inputs, timed where it runs)
    check_inputs = predictor.check_inputs

    def timed_check(images):
        t = time.perf_counter()
        out = check_inputs(images)
        if predictor.input_check is not None:  # the bare rounds call it too, and it returns at once
            inside.append(time.perf_counter() - t)
        return out

    def timed(with_check, n=20):
        predictor.input_check = check if with_check else None
        predictor.predict(sample)
        t = time.perf_counter()
        for _ in range(n):
            predictor.predict(sample)
        return (time.perf_counter() - t) / n
    # alternated rounds, the fastest of each: the cores are shared, and a busy spell would bias one side
    predictor.check_inputs = timed_check
    try:
        rounds = [(timed(True), timed(False)) for _ in range(10)]
    finally:
        del predictor.check_inputs  # the class's method again
    with_check, bare = min(r[0] for r in rounds), min(r[1] for r in rounds)
    own = float(np.median(inside))
    print(f"latency: Predictor.predict {1000 * bare:.1f} ms bare, {1000 * with_check:.1f} ms with the check "
          f"(+{100 * (with_check / bare - 1):.1f} %, {1000 * (with_check - bare):.1f} ms); models/classifier/input_check.safetensors "
          f"{(ROOT / 'models/classifier/input_check.safetensors').stat().st_size / 1e6:.2f} MB")
    print(f"the check's own time inside Predictor.predict: {1000 * own:.2f} ms (median of {len(inside)} calls), "
          f"{100 * own / bare:.1f} % of the bare call")
    def each(fn, n=50):
        fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return 1000 * (time.perf_counter() - t) / n
    if check.net is not None:  # where the check's time goes
        from brainseg.input_net import net_input, predict as net_predict

        x = net_input(sample)[None]
        print(f"the check alone: image statistics {each(lambda: slice_stats(sample, joint=False)):.2f} ms, CNN input "
              f"{each(lambda: net_input(sample)):.2f} ms, CNN {each(lambda: net_predict(check.net, x)):.2f} ms")
    if check.single_net is not None:  # grey uploads only
        from brainseg.input_net import predict_single, single_input

        grey = single_input(sample[..., 1])[None]
        print(f"a grey upload adds the single-channel CNN: {each(lambda: predict_single(check.single_net, grey), 20):.2f} ms")
    predictor.input_check = check


def shipped_non_brain(predictor) -> None:
    """The shipped check's answers on matplotlib's images: the fold benchmark scores a CNN trained without the fold,
    this is what a user of the shipped models sees."""
    images = matplotlib_images()
    preds = predictor.predict_batch(images, prob_maps=False)
    status = [p.input_check["status"] for p in preds]
    names = [f"{n} {v}" for n in ("logo2", "grace_hopper", "Minduka") for v in ("full", "top half", "left half",
                                                                                "256 x 256", "crop", "mirrored")]
    passed = ", ".join(f"{n} ({s}, detected {p.detected})" for n, s, p in zip(names, status, preds) if s != "refuse")
    print(f"shipped check on matplotlib's {len(images)} images: refused {status.count('refuse')}, warned "
          f"{status.count('warn')}, ok {status.count('ok')}; not refused: {passed or 'none'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/lgg/kaggle_3m")
    ap.add_argument("--folds", default=str(ROOT / "splits/lgg_dev_4fold_seed42.json"))
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--every", type=int, default=4, help="OOD groups from every n-th slice of the fold")
    ap.add_argument("--net", help="input CNN state dict trained without the fold (brainseg.input_net); a path that "
                                  "does not exist yet gets one, trained on the other folds' slices")
    ap.add_argument("--net-epochs", type=int, default=40, help="epochs when --net is trained here")
    ap.add_argument("--single-net", help="single-channel CNN state dict trained without the fold; trained here when "
                                         "the path does not exist yet")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--cache", help="keep the dev slices' statistics and features in this .npz (reused when present)")
    ap.add_argument("--shipped", action="store_true", help="only what needs no data: the shipped check's latency on a "
                                                          "shipped example, and its answers on matplotlib's images")
    ap.add_argument("--cases-only", action="store_true", help="only the whole-case channel vote (no slice groups)")
    args = ap.parse_args(argv)
    if args.shipped:  # the shipped check (fitted on all 88 dev cases, never on matplotlib's images): no data needed
        from brainseg.images import load_slice

        predictor = Predictor.from_sources(precision="fp32")
        latency(predictor, predictor.input_check, load_slice(ROOT / "examples/TCGA_CS_4943_20000902_17.png"))
        shipped_non_brain(predictor)
        return 0
    torch.manual_seed(0)
    rng = np.random.default_rng(12345)
    folds = json.loads(Path(args.folds).read_text())["folds"]
    predictor = Predictor.from_sources(precision="fp32")
    cases = find_cases(args.data)
    images = {c.name: [read_image(p) for p in c.images] for c in cases}
    t0 = time.perf_counter()
    if args.cache and Path(args.cache).is_file():
        with np.load(args.cache) as z:
            dev = DevStats(**{k: (z[k] if k != "features" or z[k].size else None) for k in z.files})
    else:
        dev = collect(predictor, images)
        if args.cache:
            np.savez(args.cache, **{k: (v if v is not None else np.zeros(0)) for k, v in vars(dev).items()})
    check = fold_checks(dev, folds, InputCheckConfig())[args.fold]
    if args.net:
        from brainseg import input_net

        if not Path(args.net).is_file():  # the held-out CNN: trained on every fold but this one, as the shipped one is on all
            others = [im for c in cases if c.name not in folds[args.fold] for im in images[c.name]]
            print(f"training the input CNN on {len(others)} slices of the other folds", file=sys.stderr)
            torch.save(input_net.train(np.stack([input_net.net_input(im) for im in others]),
                                       epochs=args.net_epochs).state_dict(), args.net)
        check.net = input_net.InputNet()
        check.net.load_state_dict(torch.load(args.net))
        check.net.eval()
    if args.single_net:  # the grey-upload CNN, likewise held out
        from brainseg import input_net
        from brainseg.fit_input_check import single_channel_slices

        if not Path(args.single_net).is_file():
            others = [im for c in cases if c.name not in folds[args.fold] for im in images[c.name]]
            print("training the single-channel CNN on the other folds' slices", file=sys.stderr)
            torch.save(input_net.train_single(single_channel_slices(others)).state_dict(), args.single_net)
        check.single_net = input_net.SingleChannelNet()
        check.single_net.load_state_dict(torch.load(args.single_net))
        check.single_net.eval()
    print(f"fitted the fold checks in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    fold_cases = [c for c in cases if c.name in folds[args.fold]]
    real = [im for c in fold_cases for im in images[c.name]]
    real_checks = statuses(check, predictor, real)
    table = {"real held-out slices": (rates(real_checks), "real")}
    sub = real[:: args.every]
    vols = [np.stack(images[c.name]) for c in fold_cases[:6]]
    # kaggle_3m replaced a missing sequence by FLAIR: on slices holding a channel twice, a reordered or single
    # channel can be the very image a legitimate upload is; the rows marked * leave those slices out
    from brainseg.input_net import ambiguous_order, net_input

    distinct = ~ambiguous_order(np.stack([net_input(im) for im in sub]))
    for name, (ims, kind) in ({} if args.cases_only else groups(sub, vols, rng)).items():
        got = statuses(check, predictor, ims)
        table[name] = (rates(got), kind)
        if kind in ("permuted", "single non-FLAIR"):
            table[f"{name} *"] = (rates([r for r, d in zip(got, distinct) if d]), kind)
    # what the check is for: answers that a wrong channel order changed, and how many of those went unwarned
    if not args.cases_only:
        print(f"\n{'uploads of the same slices':<26} {'n':>5} {'answer changed':>15} {'changed, not warned':>20}")
    right = [] if args.cases_only else answers(check, predictor, sub)
    for name, ims in [] if args.cases_only else [(f"permuted {p}", [np.ascontiguousarray(im[..., list(p)]) for im in sub])
                      for p in [(1, 0, 2), (0, 2, 1), (2, 1, 0), (1, 2, 0), (2, 0, 1)]] + \
            [("single pre-contrast", [im[..., 0] for im in sub]), ("single post-contrast", [im[..., 2] for im in sub]),
             ("single FLAIR (legit)", [im[..., 1] for im in sub])]:
        got = answers(check, predictor, ims)
        ch = [changed(a, b) for a, b in zip(right, got)]
        silent = [c and b[0] == "ok" for c, b in zip(ch, got)]
        print(f"{name:<26} {len(ch):>5} {np.mean(ch):>15.1%} {np.mean(silent):>20.1%}")
        table[f"changed {name}"] = ({"n": len(ch), "changed": float(np.mean(ch)), "changed_unwarned": float(np.mean(silent))},
                                    "answers")
    names = [Path(p).stem for c in fold_cases for p in c.images]
    for name, r in zip(names, real_checks):  # which rule warns or refuses a real slice
        if r.status != "ok":
            print(f"real slice {name}: {r.status}: {'; '.join(r.reasons)}")
    print(f"\nfold {args.fold}: {len(fold_cases)} held-out cases, {len(real)} slices; OOD from every {args.every}-th")
    print(f"{'group':<28} {'n':>5} {'ok':>7} {'warn':>7} {'refuse':>7} {'warn+refuse':>12}  target")
    for name, (r, kind) in table.items():
        if kind == "answers":
            continue
        print(f"{name:<28} {r['n']:>5} {r['ok']:>7.1%} {r['warn']:>7.1%} {r['refuse']:>7.1%} "
              f"{r['warn'] + r['refuse']:>12.1%}  {TARGETS.get(kind, '')}")
    print("* the same, leaving out slices with two channels alike (correlation > 0.99 at 64 px: kaggle_3m holds FLAIR "
          "twice or thrice in some cases; in a few other slices two channels are nearly the same image)")

    # whole cases: the slices' channel orders voted (InputCheck.check_case), real and permuted
    print(f"\n{'cases of the fold':<26} {'n':>5} {'ok':>7} {'warn':>7} {'refuse':>7}")
    for perm in [(0, 1, 2), (1, 0, 2), (0, 2, 1), (2, 1, 0), (1, 2, 0), (2, 0, 1)]:
        outcomes = []
        for c in fold_cases:
            ims = [np.ascontiguousarray(im[..., list(perm)]) for im in images[c.name]]
            outcomes.append(check.check_case(ims, statuses(check, predictor, ims)).status)
        n = len(outcomes)
        print(f"{'real' if perm == (0, 1, 2) else f'permuted {perm}':<26} {n:>5} {outcomes.count('ok') / n:>7.1%} "
              f"{outcomes.count('warn') / n:>7.1%} {outcomes.count('refuse') / n:>7.1%}")
        table[f"cases {perm}"] = ({"n": n, **{k: outcomes.count(k) / n for k in ("ok", "warn", "refuse")}}, "cases")

    if args.cases_only:
        return 0
    # what the refusals cost on real slices, the "not sure" marks, FLAIR alone (shipped models: in-sample)
    predictor.input_check = None
    refused = iter([r.status == "refuse" for r in real_checks])
    agg, agg_checked, agg_flair = CaseDiceAggregator(), CaseDiceAggregator(), CaseDiceAggregator()
    probs, labels, verdicts, verdicts_checked, marked, wrong = [], [], [], [], [], []
    flair_probs, flair_verdicts = [], []
    for c in fold_cases:
        truth = np.stack([read_mask(p) for p in c.masks])
        preds = predictor.predict_case(images[c.name])
        ref = [next(refused) for _ in preds]
        masks = np.stack([p.mask for p in preds])
        agg.update(c.name, masks, truth)
        agg_checked.update(c.name, np.stack([m * (not r) for m, r in zip(masks, ref)]), truth)
        for p, t, r in zip(preds, truth, ref):
            probs.append(p.probability)
            labels.append(int(t.any()))
            verdicts.append(bool(p.detected))
            verdicts_checked.append(bool(p.detected) and not r)
            marked.append(bool(p.review))
            wrong.append(bool(p.detected) != bool(t.any()) or (bool(t.any()) and dice_score(p.mask, t) < 0.5))
        fl = predictor.predict_case(images[c.name], channels="none,flair,none")
        agg_flair.update(c.name, np.stack([p.mask for p in fl]), truth)
        flair_probs += [p.probability for p in fl]
        flair_verdicts += [bool(p.detected) for p in fl]
    base, checked, flair = agg.compute(), agg_checked.compute(), agg_flair.compute()
    det = detection_metrics(probs, labels, predictor.detection_threshold, verdicts)
    det_c = detection_metrics(probs, labels, predictor.detection_threshold, verdicts_checked)
    det_f = detection_metrics(flair_probs, labels, predictor.detection_threshold, flair_verdicts)
    marked, wrong = np.array(marked), np.array(wrong)
    print(f"\nper-case Dice {base['dice_per_case_mean']:.4f} -> {checked['dice_per_case_mean']:.4f} with refusals; "
          f"detection accuracy {det['accuracy']:.4f} -> {det_c['accuracy']:.4f} (shipped models, in-sample)")
    print(f"FLAIR alone: per-case Dice {flair['dice_per_case_mean']:.4f} (3 channels {base['dice_per_case_mean']:.4f}), "
          f"detection AUROC {det_f['auroc']:.4f} ({det['auroc']:.4f}), sensitivity {det_f['sensitivity']:.4f} "
          f"({det['sensitivity']:.4f}), specificity {det_f['specificity']:.4f} ({det['specificity']:.4f})")
    cov = 1 - marked.mean()
    print(f"uncertain - review: {marked.sum()} of {len(marked)} slices marked (coverage {cov:.1%}); error rate "
          f"unmarked {wrong[~marked].mean():.2%}, marked {wrong[marked].mean() if marked.any() else float('nan'):.2%}; "
          f"{wrong[marked].sum()} of {wrong.sum()} errors are marked")

    latency(predictor, check, real[len(real) // 2])
    if args.json:
        Path(args.json).write_text(json.dumps({k: v[0] for k, v in table.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
