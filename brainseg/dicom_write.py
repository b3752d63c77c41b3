"""Write a case as DICOM series (pre-contrast, FLAIR, post-contrast), to try the DICOM path without a scanner.

    python -m brainseg.dicom_write examples/TCGA_HT_A616_19991226_slices_11-23.zip dicom_case.zip
    python -m brainseg.dicom_write CASE.zip OUT_FOLDER --flair-only --spacing 0.94 0.94 3

Each channel of the case's slices becomes one MR series of one study on one grid (axial, slice 1
lowest), 8-bit MONOCHROME2, files named by a random number so that only ImagePositionPatient
orders them. The patient is a made-up "BRAINSEG^DEMO": no real identifier is ever written. Used by
the tests and ``benchmarks/bench_case.py`` too.
"""
import argparse
import io
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

CHANNELS = (("pre-contrast", "AX T1 PRE"), ("FLAIR", "AX FLAIR"), ("post-contrast", "AX T1 POST GAD"))


def series_datasets(slices: Sequence[np.ndarray], spacing=(1.0, 1.0, 3.0), channels=(0, 1, 2),
                    transfer_syntaxes: Optional[Sequence[str]] = None, seed: int = 0) -> List[object]:
    """pydicom datasets, one a slice and channel: ``slices`` (HxWx3 uint8) as up to three series of one study.

    ``transfer_syntaxes`` are cycled over the files (pydicom's encoders: RLE Lossless, JPEG-LS and
    JPEG 2000 Lossless among them); default Explicit VR Little Endian.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, UID, generate_uid

    rng = np.random.default_rng(seed)
    study, frame = generate_uid(), generate_uid()
    syntaxes = list(transfer_syntaxes or [ExplicitVRLittleEndian])
    out = []
    h, w = slices[0].shape[:2]
    for number, c in enumerate(channels, start=1):
        series = generate_uid()
        for k, img in enumerate(slices):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "BRAINSEG^DEMO", "BRAINSEG-DEMO-0001", "", "O"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20000101", "120000", "1", "", ""
            ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", number, int(rng.integers(1, 10**6))
            ds.SeriesDescription = CHANNELS[c][1]
            if CHANNELS[c][0] == "post-contrast":
                ds.ContrastBolusAgent = "GADOLINIUM"
            ds.Manufacturer, ds.PositionReferenceIndicator = "brainseg", ""
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [-w / 2 * spacing[1], -h / 2 * spacing[0], k * spacing[2]]
            ds.PixelSpacing = [spacing[0], spacing[1]]
            ds.SliceThickness = spacing[2]
            ds.Rows, ds.Columns = h, w
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit, ds.PixelRepresentation = 7, 0
            ds.PixelData = np.ascontiguousarray(img[..., c], np.uint8).tobytes()
            syntax = UID(syntaxes[len(out) % len(syntaxes)])
            if syntax.is_compressed:
                ds.compress(syntax)
            else:
                ds.file_meta.TransferSyntaxUID = syntax
            out.append(ds)
    return out


def to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_series_zip(datasets: Sequence[object], path: Path, seed: int = 0, extra: Optional[Dict[str, bytes]] = None) -> Path:
    """The datasets as a zip of ``IM<random>.dcm`` files in shuffled order (plus ``extra`` members)."""
    rng = np.random.default_rng(seed)
    names = rng.permutation(len(datasets))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in rng.permutation(len(datasets)):
            z.writestr(f"DICOM/IM{names[i]:05d}.dcm", to_bytes(datasets[i]))
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return Path(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m brainseg.dicom_write", description=__doc__.split("\n\n")[0])
    ap.add_argument("case", help="a case: zip, folder, multi-page TIFF or NIfTI (as brainseg.predict reads)")
    ap.add_argument("out", help="a .zip to write, or a folder (created) for one .dcm file a slice")
    ap.add_argument("--spacing", nargs=3, type=float, default=(1.0, 1.0, 3.0), metavar=("ROW", "COL", "SLICE"),
                    help="voxel spacing in mm written into the series (default 1 1 3)")
    ap.add_argument("--flair-only", action="store_true", help="write the FLAIR series only")
    args = ap.parse_args(argv)
    from .case_io import load_case

    try:
        case = load_case(args.case)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    slices = [np.clip(s, 0, 255).astype(np.uint8) for s in case.slices]
    datasets = series_datasets(slices, tuple(args.spacing), (1,) if args.flair_only else (0, 1, 2))
    out = Path(args.out)
    if out.suffix.lower() == ".zip":
        write_series_zip(datasets, out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, ds in enumerate(datasets):
            (out / f"IM{i:05d}.dcm").write_bytes(to_bytes(ds))
    print(f"wrote {len(datasets)} DICOM files ({len(datasets) // len(slices)} series of {len(slices)} slices) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
