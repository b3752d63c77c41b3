"""Old home of the whole-case code, kept importable for one release: use the modules named below.

- reading cases from untrusted files, their limits and the mask writers: :mod:`brainseg.case_io`;
- analysis (``analyze_case``, ``summarize``, ``CaseResult``, ``predict_case_files``): :mod:`brainseg.case_analysis`;
- figures (``plot_probabilities``, ``case_montage``): :mod:`brainseg.viz`.
"""
from typing import Optional, Sequence

import numpy as np

from .case_analysis import CaseResult, analyze_case, predict_case_files, summarize  # noqa: F401
from .case_io import (IMAGE_EXTS, NIFTI_EXTS, CaseInput, check_same_size, file_ext, format_numbers,  # noqa: F401
                      inside, load_case, load_case_files, load_case_folder, load_case_nifti, load_case_tiff,
                      load_case_zip, parse_slice_name, safe_name, write_case_outputs, write_mask_nifti,
                      write_mask_tiff)
from .safe_zip import check_member_name  # noqa: F401
from .viz import case_montage, plot_probabilities  # noqa: F401


def predict_slices(predictor, slices: Sequence[np.ndarray], threshold: Optional[float] = None,
                   batch_size: int = 16) -> list:
    """``predictor.predict_batch``: the classifier gate that this function used to add now lives there."""
    return predictor.predict_batch(slices, threshold=threshold, batch_size=batch_size)
