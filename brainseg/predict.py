"""Predict tumour masks for a slice, a case or a whole kaggle_3m folder: masks in the kaggle_3m naming and a CSV.

    python -m brainseg.predict TCGA_CS_4941_19960909_12.tif --out preds
    python -m brainseg.predict ../shared/data/lgg/kaggle_3m/TCGA_CS_4941_19960909 --out preds --figures
    python -m brainseg.predict ../shared/data/lgg/kaggle_3m --out preds --segmenter user/brainseg-segmenter@v1
    python -m brainseg.predict case.zip --out preds          # also a multi-page TIFF or a NIfTI volume
    python -m brainseg.predict dicom_folder --out preds --series "AX FLAIR"   # a DICOM series (folder or zip)
    python -m brainseg.predict --data ../shared/data/lgg/kaggle_3m --out preds   # the input as --data, too

INPUT is one slice file (its ``<stem>_mask.tif`` beside it is used as ground truth when present),
a case folder, a folder of case folders (the kaggle_3m layout), a zip of a case folder, a
multi-page TIFF, a NIfTI file or a DICOM series (a folder, a zip or a .dcm file). For each case it writes, under ``--out`` only:

    OUT/<case>/<case>_<n>_mask.tif    predicted mask of slice n, uint8 0/255 (the kaggle_3m naming)
    OUT/<case>/<case>_summary.json    the case summary (volume, largest slice, per-slice figures, Dice)
    OUT/<case>/<case>_masks.tif       all masks as one multi-page uint8 0/255 TIFF, spacing in mm when known
    OUT/<case>/<case>_masks.nii.gz    the masks as NIfTI (on the input's own grid for NIfTI and DICOM input)
    OUT/<case>/<case>_slices.csv      per slice: probability, verdict, area in px and mm²
    OUT/<case>/<case>_seg.dcm         for DICOM input (a folder, a zip or .dcm files): a DICOM SEG over the series
    OUT/<case>/<case>_probability.png, <case>_overlays.png   with --figures
    OUT/predictions.csv               case, slice, tumor_probability, tumor_detected, tumor_area_px, dice,
                                      input_check (ok/warn/refuse), uncertain (0/1)

Every slice and case goes through the Predictor's input check (:mod:`brainseg.input_check`): a refused
slice has no verdict (empty probability and verdict in the CSV, ``null`` in the JSON), and a case that
is warned about or refused says why on its line. ``--channels flair,pre,post`` (or ``flair`` for FLAIR
alone) says the input's channel order when it is not the models' (pre-contrast, FLAIR, post-contrast).

``dice`` is filled where ground-truth masks exist: the CSV holds each slice's Dice, the JSON the
per-case Dice over the whole stack (as ``brainseg.evaluate`` computes it). Bad input stops with a
message and exit status 2; in a folder of cases, a bad case is skipped with a message, the others
are written, and the exit status is 2 too. Progress goes to stderr: how many cases were found, then a bar over them (``--quiet``
hides both); one line a case goes to stdout. The files are written by
:func:`brainseg.exports.write_case_outputs`, the app's writer too.
"""
import argparse
import csv
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .case_io import CaseInput, load_case, parse_slice_name, safe_name
from .exports import inside, write_case_outputs
from .cli import add_data_arg, add_model_args, add_runtime_args, data_arg, predictor_from_args
from .file_types import CASE_SLICE_EXTS, file_ext

CSV_FIELDS = ["case", "slice", "tumor_probability", "tumor_detected", "tumor_area_px", "dice", "input_check",
              "uncertain"]


def _has_slices(folder: Path) -> bool:
    """Whether a folder holds numbered slice images (masks alone do not count)."""
    for p in folder.iterdir():
        if p.is_file() and file_ext(p.name) in CASE_SLICE_EXTS:
            _, num, is_mask = parse_slice_name(p.name)
            if num is not None and not is_mask:
                return True
    return False


def _has_dicom(folder: Path) -> bool:
    """Whether a folder holds DICOM files (a DICOM extension, or none and the DICM preamble)."""
    from .dicom_io import dicom_entries, is_dicom_name

    return bool(dicom_entries([(p.name, lambda p=p: p.open("rb").read(132)) for p in folder.iterdir()
                               if p.is_file() and is_dicom_name(p.name)]))


def discover(input_path: Path, out: Path) -> List[object]:
    """What to predict: [a file], [a case folder], the case folders of a kaggle_3m folder, or [[image, mask]]."""
    if not input_path.exists():
        raise FileNotFoundError(f"Input not found: {input_path}")
    if input_path.is_file():
        if parse_slice_name(input_path.name)[2]:
            raise ValueError(f"{input_path.name} is a mask; give the slice image")
        truth = input_path.with_name(input_path.name[: -len(file_ext(input_path.name))] + "_mask.tif")
        if file_ext(input_path.name) in CASE_SLICE_EXTS and truth.is_file():
            return [[input_path, truth]]
        return [input_path]
    if _has_slices(input_path) or _has_dicom(input_path):
        return [input_path]
    out_r = out.resolve()
    folders = sorted(p for p in input_path.iterdir() if p.is_dir() and p.resolve() != out_r and _has_slices(p))
    if not folders:
        raise ValueError(f"No slice images (<case>_<n>.tif or .png) in {input_path} nor in its sub-folders "
                         f"(expected a case folder or the kaggle_3m layout)")
    return folders


def write_case(case: CaseInput, result, out: Path, used: set, figures: bool = False) -> Tuple[Path, dict]:
    """Write one case's outputs into ``out/<case>`` (a fresh, safe name); returns (folder, summary)."""
    name = safe_name(case.name)
    base, k = name, 2
    while name in used:  # two inputs with the same (sanitised) case name must not overwrite each other
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    folder = inside(out, out / name)
    if folder.is_dir() and _has_slices(folder):  # e.g. --out is the kaggle_3m folder itself: its masks are the truth
        raise ValueError(f"Refusing to write into {folder}: it holds slice images (an input case folder?) and its "
                         f"_mask files would be overwritten; choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    inside(out, folder)  # again, now that it exists: a symbolic link planted at out/<case> is caught
    from .case_analysis import summarize

    summary = dict(summarize(result), case=name)
    write_case_outputs(case, result, folder, figures=figures, slice_masks=True, name=name, summary=summary)
    return folder, summary


def csv_rows(summary: dict) -> List[dict]:
    """One CSV row a slice; a refused slice (no verdict) leaves probability and verdict empty."""
    return [{"case": summary["case"], "slice": s["slice"],
             "tumor_probability": "" if s["tumor_probability"] is None else f"{s['tumor_probability']:.6f}",
             "tumor_detected": "" if s["tumor_detected"] is None else int(s["tumor_detected"]),
             "tumor_area_px": s["tumor_area_px"], "dice": "" if s["dice"] is None else f"{s['dice']:.6f}",
             "input_check": (s.get("input_check") or {}).get("status", "ok"), "uncertain": int(bool(s.get("uncertain")))}
            for s in summary["per_slice"]]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m brainseg.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p, "slice file, case folder, kaggle_3m folder, zip, multi-page TIFF, NIfTI or DICOM folder",
                 metavar="INPUT")
    p.add_argument("--out", required=True, help="output folder (created); nothing is written outside it")
    add_model_args(p)
    p.add_argument("--threshold", type=float, help="pixel probability threshold (default: the segmenter config's)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("ROW", "COL", "SLICE"),
                   help="voxel size in mm, for volumes in mL when the input does not carry it")
    p.add_argument("--series", help="DICOM input holding several series: the SeriesDescription of the one to analyse")
    p.add_argument("--figures", action="store_true", help="also write the probability plot and the overlay montage")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--channels", help="the input's channel order when not pre,flair,post: e.g. flair,pre,post; "
                                      "'flair' for FLAIR alone")
    add_runtime_args(p)
    p.add_argument("--quiet", action="store_true", help="no case count and progress bar on stderr")
    args = p.parse_args(argv)
    args.input = data_arg(p, args)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        p.error(f"--threshold must lie in [0, 1], got {args.threshold}")

    out = Path(args.out)
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")
        sources = discover(Path(args.input), out)
        for src in sources:  # the common slip: --out naming the folder that holds the case folders
            folder = Path(src[0] if isinstance(src, list) else src).resolve()
            folder = folder if folder.is_dir() else folder.parent
            if folder.parent == out.resolve() and _has_slices(folder):
                raise ValueError(f"--out {out} holds the input case folder {folder.name}: its _mask files would be "
                                 f"overwritten; choose another --out")
        first = load_case(sources[0], series=args.series) if len(sources) == 1 else None  # bad single input fails before the models load
        from .case_analysis import analyze_case  # torch loads only once the input has passed its checks

        predictor = predictor_from_args(args)
    except (FileNotFoundError, ValueError, OSError, RuntimeError) as e:  # RuntimeError: a checkpoint that does not fit
        p.error(str(e))

    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    rows, used, failed, dices = [], set(), [], []
    total = len(sources)
    if not args.quiet:
        print(f"{total} case{'s' if total != 1 else ''} to predict, writing to {out}", file=sys.stderr)
    bar = tqdm(sources, desc="predicting", unit="case", file=sys.stderr, disable=args.quiet or total < 2)
    for k, src in enumerate(bar, start=1):
        label = Path(src[0] if isinstance(src, list) else src).name
        bar.set_postfix_str(label, refresh=False)
        try:
            case = first if first is not None else load_case(src, series=args.series)
            if args.spacing:
                case.set_spacing(args.spacing)
            result = analyze_case(predictor, case, args.threshold, args.batch_size, channels=args.channels)
            folder, summary = write_case(case, result, out, used, args.figures)
        except (ValueError, OSError) as e:
            if len(sources) == 1:
                p.error(str(e))
            tqdm.write(f"[{k}/{total}] skipped {label}: {e}", file=sys.stderr)
            failed.append(label)
            continue
        rows += csv_rows(summary)
        if summary["dice"] is not None:
            dices.append(summary["dice"])
        vol = f"{summary['tumor_volume_voxels']} voxels" + (
            f" ({summary['tumor_volume_ml']:.2f} mL)" if summary["tumor_volume_ml"] is not None else "")
        n = summary["slices"]
        tqdm.write(f"[{k}/{total}] {summary['case']}: {n} slice{'s' if n != 1 else ''}, {summary['tumor_slices']} with tumour, {vol}"
              + (f", largest on slice {summary['largest_area_slice']}" if summary["largest_area_slice"] is not None else "")
              + (f", Dice {summary['dice']:.4f}" if summary["dice"] is not None else "") + f" -> {folder}",
                   file=sys.stdout)
        chk = summary["input_check"]
        if chk["status"] != "ok":
            tqdm.write(f"  input check: {chk['status'].upper()}: {'; '.join(chk['reasons'])}", file=sys.stdout)

    if not rows:
        print("nothing predicted", file=sys.stderr)
        return 2  # every input was bad
    csv_path = inside(out, out / "predictions.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {csv_path} ({len(rows)} slices, {len(sources) - len(failed)} case(s))")
    if dices:
        print(f"mean per-case Dice over {len(dices)} case(s) with ground truth: {sum(dices) / len(dices):.4f}")
    if failed:
        print(f"{len(failed)} input(s) skipped: {', '.join(failed)}", file=sys.stderr)
        return 2  # bad input, as everywhere; the good cases are written
    return 0


if __name__ == "__main__":
    sys.exit(main())
