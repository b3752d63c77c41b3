"""Fit the input check on the dev slices and choose its thresholds on held-out folds, by patient.

    python -m brainseg.fit_input_check --data ../shared/data/lgg/kaggle_3m --out models/classifier

For each fold of ``--folds`` the statistics are fitted on the other folds' slices and the fold's
own slices are scored, so every slice gets a held-out distance; the warn distance of each score is
the ``warn_quantile`` of those held-out distances. The shipped statistics are then fitted on every
case. The classifier's features of the dev slices are in-sample when the classifier was trained on
every case (the shipped one was): its features of new patients may lie further out than these.
Writes ``OUT/input_check.safetensors`` (a few hundred kB) and prints the held-out rates.
"""
import argparse
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .input_check import FILENAME, ORDERS, Gaussian, InputCheck, InputCheckConfig, Linear, ordered
from .input_stats import ENTROPY, SliceStats, slice_stats


@dataclass
class DevStats:
    """Per-slice statistics of a set of cases: ``features`` (N, F) or None, ``image`` (N, k),
    ``channels`` (N, 3, m), ``cases`` (N,) case names."""

    features: Optional[np.ndarray]
    image: np.ndarray
    channels: np.ndarray
    cases: np.ndarray
    joint: np.ndarray

    def subset(self, keep: np.ndarray) -> "DevStats":
        return DevStats(None if self.features is None else self.features[keep], self.image[keep],
                        self.channels[keep], self.cases[keep], self.joint[keep])

    def slice(self, i: int) -> SliceStats:
        return SliceStats(self.image[i], self.channels[i], False, False, 0.0, False, self.joint[i])


def collect(predictor, images_by_case: Dict[str, Sequence[np.ndarray]], batch_size: int = 32) -> DevStats:
    """The statistics of every slice, the classifier's pooled features read through the Predictor's tap."""
    feats: List[np.ndarray] = []
    image, channels, cases, joint = [], [], [], []
    for name, images in images_by_case.items():
        for start in range(0, len(images), batch_size):
            chunk = list(images[start:start + batch_size])
            f = predictor.classifier_features(chunk)
            if f is not None:
                feats.append(f)
            for im in chunk:
                s = slice_stats(im)
                image.append(s.image)
                channels.append(s.channels)
                joint.append(s.joint)
                cases.append(name)
    return DevStats(np.concatenate(feats) if feats else None, np.array(image), np.array(channels), np.array(cases),
                    np.array(joint))


def fit(dev: DevStats, config: InputCheckConfig) -> InputCheck:
    """Gaussians of the features and image statistics, and the channel regressions, on ``dev``'s slices.

    The order regression learns from every slice in all six channel orders (the statistics permuted,
    not recomputed); the single-channel one from each channel alone.
    """
    stats = [dev.slice(i) for i in range(len(dev.cases))]
    x = np.array([ordered(s, o) for s in stats for o in ORDERS])
    order = Linear.fit(x, np.tile(np.arange(len(ORDERS)), len(stats)))
    single = Linear.fit(dev.channels.reshape(-1, dev.channels.shape[-1]), np.tile(np.arange(3), len(stats)))
    feats = Gaussian.fit(dev.features) if dev.features is not None else None
    return InputCheck(config, feats, Gaussian.fit(dev.image), order, single)


def held_out(dev: DevStats, folds: Sequence[Sequence[str]]) -> Dict[str, np.ndarray]:
    """Squared distances of every slice under statistics fitted without its fold (``"features"``,
    ``"image"``), and the check fitted without it per fold (``"checks"``, fold index per slice in ``"fold"``)."""
    out = {"image": np.full(len(dev.cases), np.nan), "features": np.full(len(dev.cases), np.nan),
           "fold": np.full(len(dev.cases), -1), "entropy": dev.channels[:, :, ENTROPY].min(1),
           "order_gap": np.zeros(len(dev.cases)), "p_flair": np.zeros(len(dev.cases))}
    checks = []
    for k, fold in enumerate(folds):
        test = np.isin(dev.cases, list(fold))
        check = fit(dev.subset(~test), InputCheckConfig())
        checks.append(check)
        out["image"][test] = check.image.distance(dev.image[test])
        if check.features is not None:
            out["features"][test] = check.features.distance(dev.features[test])
        out["fold"][test] = k
        idx = np.flatnonzero(test)
        lp = np.array([check.order.log_probs(ordered(dev.slice(i)))[0] for i in idx])
        out["order_gap"][test] = lp.max(1) - lp[:, 0]  # how much better another order explains a real slice
        out["p_flair"][test] = np.exp(check.single.log_probs(dev.channels[idx, 1])[:, 1])
    out["checks"] = checks
    return out


def choose(held: Dict[str, np.ndarray], config: InputCheckConfig, without: Optional[int] = None) -> InputCheckConfig:
    """``config`` with warn distances at ``warn_quantile`` of the held-out distances (those of fold
    ``without`` left out, so a fold's own rates are measured with thresholds it did not choose)."""
    keep = held["fold"] != without if without is not None else np.ones(len(held["fold"]), bool)
    cfg = InputCheckConfig(**{**config.__dict__})
    cfg.image_warn = float(np.quantile(held["image"][keep], config.warn_quantile))
    cfg.entropy_min = float(np.quantile(held["entropy"][keep], 0.0005))
    cfg.channel_margin = max(float(np.quantile(held["order_gap"][keep], config.warn_quantile)), 1.0)
    cfg.flair_min = float(np.quantile(held["p_flair"][keep], 1 - config.warn_quantile))
    if np.isfinite(held["features"][keep]).all():
        cfg.feature_warn = float(np.quantile(held["features"][keep], config.warn_quantile))
    return cfg


def fold_checks(dev: DevStats, folds: Sequence[Sequence[str]], config: InputCheckConfig) -> List[InputCheck]:
    """One check per fold, fitted without the fold's cases and with thresholds chosen without its scores:
    what a held-out fold is honestly scored with (the benchmark uses them)."""
    held = held_out(dev, folds)
    checks = []
    for k, check in enumerate(held["checks"]):
        check.config = choose(held, config, without=k)
        checks.append(check)
    return checks


def single_channel_slices(images: Sequence[np.ndarray], net_inputs: Optional[np.ndarray] = None) -> np.ndarray:
    """The single-channel CNN's training slices: (N, 128, 128, 3) float32, resized, without the slices that
    hold a channel twice (their channel labels would be wrong: :func:`brainseg.input_net.ambiguous_order`).
    ``net_inputs``: the slices' :func:`brainseg.input_net.net_input` arrays when already made."""
    import cv2

    from .input_net import SINGLE_SIZE, ambiguous_order, net_input

    if net_inputs is None:
        net_inputs = np.stack([net_input(im) for im in images])
    keep = ~ambiguous_order(net_inputs)
    return np.stack([cv2.resize(np.asarray(im, np.float32), (SINGLE_SIZE, SINGLE_SIZE), interpolation=cv2.INTER_AREA)
                     for im, k in zip(images, keep) if k])


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .cli import add_data_arg, data_arg
    from .data import find_cases, read_image
    from .inference import Predictor, weights_sha256

    p = argparse.ArgumentParser(prog="python -m brainseg.fit_input_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p, "kaggle_3m-layout folder (the dev cases)")
    p.add_argument("--folds", default="splits/lgg_dev_4fold_seed42.json", help="k-fold split file, by patient")
    p.add_argument("--segmenter", default=None, help="segmenter source (only loaded to build the Predictor)")
    p.add_argument("--classifier", default=None, help="classifier source whose pooled features are fitted")
    p.add_argument("--out", default="models/classifier", help="folder for input_check.safetensors")
    p.add_argument("--no-net", action="store_true", help="no input CNN: the channel regressions decide the order")
    p.add_argument("--net-epochs", type=int, default=40)
    p.add_argument("--single-epochs", type=int, default=30)
    p.add_argument("--net-from", help="keep the input CNN of this input_check.safetensors (refit the statistics only)")
    args = p.parse_args(argv)
    import json
    from pathlib import Path

    folds = json.loads(Path(args.folds).read_text())["folds"]
    predictor = Predictor.from_sources(args.segmenter, args.classifier, precision="fp32", input_check=False)
    cases = find_cases(data_arg(p, args))
    print(f"{len(cases)} cases: reading slices and the classifier's features", file=sys.stderr)
    images = {c.name: [read_image(x) for x in c.images] for c in cases}
    dev = collect(predictor, images)
    config = InputCheckConfig(classifier_sha256=weights_sha256(predictor.classifier),
                              fitted_on=f"{len(cases)} cases, {len(dev.cases)} slices; thresholds on held-out folds "
                                        f"of {args.folds}")
    held = held_out(dev, folds)
    config = choose(held, config)
    check = fit(dev, config)
    if args.net_from:
        kept = InputCheck.load(args.net_from)
        check.net, check.single_net = kept.net, kept.single_net
    elif not args.no_net:  # the input CNNs, on every slice (their thresholds: see InputCheckConfig)
        from . import input_net

        slices = [im for ims in images.values() for im in ims]
        print("training the input CNN", file=sys.stderr)
        x = np.stack([input_net.net_input(im) for im in slices])
        check.net = input_net.train(x, epochs=args.net_epochs)
        print("training the single-channel CNN", file=sys.stderr)
        check.single_net = input_net.train_single(single_channel_slices(slices, x), epochs=args.single_epochs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = check.save(out / FILENAME)
    for k in ("image", "features"):
        warn = getattr(config, f"{k if k == 'image' else 'feature'}_warn")
        d = held[k] / warn
        refuse = getattr(config, f"{k if k == 'image' else 'feature'}_refuse")
        print(f"{k:<9} warn distance {warn:10.1f}  held-out slices warned {np.mean(d >= 1):.4f}, "
              f"refused {np.mean(d >= refuse):.4f}")
    print(f"channels: order margin {config.channel_margin:.2f} (real slices warned {np.mean(held['order_gap'] >= config.channel_margin):.4f}), "
          f"FLAIR alone needs P(FLAIR) >= {config.flair_min:.3f}")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
