"""The file types brainseg accepts, named once: the app's pickers, the case reader and the CLI read them here.

The content decides how a file is decoded (:mod:`brainseg.images` sniffs the bytes); these lists only say
which names an entry point offers to read, so that the picker, the folder scan and the error agree.
"""
import os

SLICE_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")  # one slice (the app's slice tab, brainseg.predict)
CASE_SLICE_EXTS = SLICE_EXTS  # the slices of a case (a folder, a zip, a list)
DICOM_EXTS = (".dcm", ".dicom", ".ima")  # DICOM files (also read: files with no extension and the DICM preamble)
NIFTI_EXTS = (".nii", ".nii.gz")  # a whole case in one volume
ARCHIVE_EXTS = (".zip",)  # a whole case as slice files in a zip
CASE_UPLOAD_TYPES = ARCHIVE_EXTS + CASE_SLICE_EXTS + (".nii", ".gz") + DICOM_EXTS  # a browser picker's view of the above


def file_ext(name: str) -> str:
    """The lower-case extension, ".nii.gz" counted as one."""
    low = name.lower()
    if low.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(low)[1]
