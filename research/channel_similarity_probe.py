"""How alike kaggle_3m's three channels are, slice by slice and case by case (2026-12-07; not in brainseg).

    python research/channel_similarity_probe.py [--data DIR] [--every 2]
    python research/channel_similarity_probe.py --net NET_FOLD1.pt --single-net SINGLE_FOLD1.pt --fold 1

Why per-slice channel order stays hard for the input check (issue 32): if the pre-contrast channel were a T1
image like the post-contrast one, the two T1 channels would be the most alike pair and FLAIR's place would be
plain on every slice. This prints, on the dev slices at the input CNN's 64 px (each channel z-scored over its
foreground, slices with two channels alike left out as the CNN's training does), the correlation of each
channel pair and how often pre-contrast is at least as like FLAIR as like post-contrast, per slice and per
case. With ``--net`` (a held-out order CNN, as ``benchmarks/bench_input_check.py --net`` saves it) it prints
how often the swapped uploads are warned, split by the case's kind of pre-contrast channel; with
``--single-net`` (a held-out single-channel CNN), how often a lone pre-contrast channel is, split the same way.
"""
import argparse
import json

import numpy as np
import torch

from brainseg.data import find_cases, read_image
from brainseg.input_check import InputCheckConfig
from brainseg.input_net import (InputNet, SingleChannelNet, ambiguous_order, net_input, predict, predict_single,
                                single_input)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/lgg/kaggle_3m")
    ap.add_argument("--splits", default="splits/lgg_dev_4fold_seed42.json")
    ap.add_argument("--every", type=int, default=2, help="every n-th slice of each case")
    ap.add_argument("--net", help="a held-out order CNN (state dict) to split its warnings by the kind of case")
    ap.add_argument("--single-net", help="a held-out single-channel CNN (state dict): lone pre-contrast, split alike")
    ap.add_argument("--fold", type=int, default=1, help="the fold that --net and --single-net did not see")
    args = ap.parse_args(argv)

    names, x, pre = [], [], []
    for case in find_cases(args.data):
        for p in case.images[:: args.every]:
            image = read_image(p)
            names.append(case.name)
            x.append(net_input(image))
            pre.append(single_input(image[..., 0]) if args.single_net else None)
    names, x = np.array(names), np.stack(x)
    keep = ~ambiguous_order(x)
    fg = x.max(1) > x.min((1, 2, 3))[:, None, None] + 0.5  # above the z-scored background in some channel
    corr = np.full((len(x), 3), np.nan)
    for i in np.flatnonzero(keep & (fg.sum((1, 2)) >= 100)):
        c = np.corrcoef(x[i][:, fg[i]])
        corr[i] = c[0, 1], c[0, 2], c[1, 2]  # pre-FLAIR, pre-post, FLAIR-post
    ok = ~np.isnan(corr[:, 0])
    lead = corr[:, 0] - corr[:, 1]  # > 0: pre-contrast is more like FLAIR than like post-contrast
    print(f"{ok.sum()} slices of {len(set(names[ok]))} cases (one slice in {args.every}; {np.sum(~keep)} with two "
          f"channels alike left out)")
    print("median correlation: pre-FLAIR {:.3f}, pre-post {:.3f}, FLAIR-post {:.3f}".format(*np.median(corr[ok], 0)))
    print(f"slices where pre-contrast is at least as like FLAIR as like post-contrast: {np.mean(lead[ok] >= 0):.1%}")
    per_case = {n: float(np.median(lead[ok & (names == n)])) for n in sorted(set(names[ok]))}
    v = np.array(list(per_case.values()))
    print(f"cases whose median slice has it so: {np.sum(v >= 0)} of {len(v)}; per-case median of "
          f"corr(pre, FLAIR) - corr(pre, post): quantiles 0/10/50/90/100 % = "
          + " / ".join(f"{q:+.2f}" for q in np.quantile(v, [0, 0.1, 0.5, 0.9, 1])))

    if not (args.net or args.single_net):
        return 0
    fold = set(json.load(open(args.splits))["folds"][args.fold])
    held = ok & np.isin(names, list(fold))
    flair_like = np.array([per_case.get(n, np.nan) >= 0 for n in names])[held]
    config = InputCheckConfig()
    rows = []
    if args.net:
        net = load(InputNet(), args.net)
        for label, order in (("FLAIR and pre-contrast swapped", (1, 0, 2)), ("the two T1 channels swapped", (2, 1, 0)),
                             ("as uploaded (real, wrongly warned)", (0, 1, 2))):
            lp, _ = predict(net, x[held][:, list(order)])
            rows.append((label, (lp[:, 1:6].max(1) - lp[:, 0]) >= config.net_margin))
    if args.single_net:
        single = load(SingleChannelNet(), args.single_net)
        p_flair = predict_single(single, np.stack([pre[i] for i in np.flatnonzero(held)]))[:, 1]
        rows.append(("pre-contrast alone", p_flair < config.single_flair_min))
    print(f"\nfold {args.fold} held out; warned: another order {config.net_margin:g} log-odds likelier, or a grey "
          f"upload under P(FLAIR) {config.single_flair_min:g}")
    print(f"{'upload':<34} {'pre like FLAIR':>16} {'pre like post':>15}")
    for label, warned in rows:
        cells = [f"{warned[m].mean():.1%} of {m.sum()}" for m in (flair_like, ~flair_like)]
        print(f"{label:<34} {cells[0]:>16} {cells[1]:>15}")
    return 0


def load(net, path):
    net.load_state_dict(torch.load(path))
    return net.eval()


if __name__ == "__main__":
    raise SystemExit(main())
