"""kaggle_3m discovery, the patient-level split file, datasets and joint augmentation."""
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from .config import PreprocessConfig
from .images import DATASET_LIMITS, InvalidImageError, load_mask, load_slice
from .preprocess import preprocess, resize

PathLike = Union[str, Path]
_SLICE_RE = re.compile(r"^(?P<case>.+)_(?P<num>\d+)\.tif$")
_INST_RE = re.compile(r"^TCGA_(?P<inst>[A-Z0-9]{2})_")


@dataclass
class Case:
    """One patient's stack: slice images and masks in slice order."""

    name: str
    images: List[Path]
    masks: List[Path]

    @property
    def institution(self) -> str:
        return institution_of(self.name)

    def __len__(self) -> int:
        return len(self.images)


def institution_of(case_name: str) -> str:
    """The TCIA institution code (CS, DU, EZ, FG, HT, ...) in a case name, or 'unknown'."""
    m = _INST_RE.match(case_name)
    return m.group("inst") if m else "unknown"


def slice_number(path: PathLike) -> int:
    """The slice number of ``<case>_<n>.tif`` (so ``_2`` sorts before ``_10``)."""
    m = _SLICE_RE.match(Path(path).name)
    if not m:
        raise ValueError(f"Not a kaggle_3m slice file name (<case>_<n>.tif): {path}")
    return int(m.group("num"))


def read_case(folder: PathLike, require_masks: bool = True) -> Case:
    """Read one case folder; images ordered by slice number, each with its ``_mask.tif``."""
    folder = Path(folder)
    images = sorted((p for p in folder.glob("*.tif") if _SLICE_RE.match(p.name) and not p.stem.endswith("_mask")),
                    key=slice_number)
    if not images:
        raise FileNotFoundError(f"No slice images (<case>_<n>.tif) in case folder {folder}")
    masks = [p.with_name(p.stem + "_mask.tif") for p in images]
    if require_masks:
        missing = [str(m) for m in masks if not m.exists()]
        if missing:
            raise FileNotFoundError(f"Missing mask for {len(missing)} slice(s), first: {missing[0]}")
    return Case(folder.name, images, masks)


def find_cases(root: PathLike, require_masks: bool = True) -> List[Case]:
    """All case folders under a kaggle_3m root, sorted by name.

    Raises FileNotFoundError naming the path when the root is missing or holds no case.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.tif")))
    if not folders:
        raise FileNotFoundError(f"No case folders with .tif slices in {root} (expected the kaggle_3m layout)")
    return [read_case(f, require_masks) for f in folders]


def read_image(path: PathLike) -> np.ndarray:
    """A slice image as HxWx3 in the file's channel order (pre-contrast, FLAIR, post-contrast), through
    :func:`brainseg.images.load_slice`, so training sees what the app sees (uint8 for 8-bit files)."""
    try:
        return load_slice(path, limits=DATASET_LIMITS)
    except InvalidImageError as e:
        raise OSError(f"Cannot read image file {path}: {e}") from None


def read_mask(path: PathLike) -> np.ndarray:
    """A mask as uint8 HxW of 0/1 (files hold 0/255), through :func:`brainseg.images.load_mask`."""
    try:
        return load_mask(path, limits=DATASET_LIMITS)
    except InvalidImageError as e:
        raise OSError(f"Cannot read mask file {path}: {e}") from None


# ---------------------------------------------------------------- patient-level split

def make_split(cases: Sequence[Union[Case, str]], val_fraction: float = 0.2, seed: int = 42) -> Dict:
    """Split case names into train/val, stratified by institution, deterministic from ``seed``.

    Each institution contributes round(n * val_fraction) validation cases (at least one when it
    has two or more), so the validation set mirrors the scanners of the training set.
    """
    names = sorted(c.name if isinstance(c, Case) else str(c) for c in cases)
    by_inst: Dict[str, List[str]] = defaultdict(list)
    for n in names:
        by_inst[institution_of(n)].append(n)
    rng = random.Random(seed)
    val: List[str] = []
    for inst in sorted(by_inst):
        group = by_inst[inst][:]
        rng.shuffle(group)
        k = int(round(len(group) * val_fraction))
        if k == 0 and len(group) >= 2 and val_fraction > 0:
            k = 1
        val += group[:k]
    val_set = set(val)
    return {"seed": seed, "val_fraction": val_fraction, "stratified_by": "institution",
            "train": [n for n in names if n not in val_set], "val": sorted(val_set)}


def make_folds(cases: Sequence[Union[Case, str]], k: int = 4, seed: int = 42) -> Dict:
    """Deal case names into ``k`` folds by patient, stratified by institution, deterministic from ``seed``.

    Each institution's cases are shuffled and dealt round-robin, the deal continuing from fold to
    fold across institutions, so fold sizes differ by at most one and every fold mirrors the scanners.
    """
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    names = sorted(c.name if isinstance(c, Case) else str(c) for c in cases)
    if len(names) < k:
        raise ValueError(f"{len(names)} cases cannot fill {k} folds")
    by_inst: Dict[str, List[str]] = defaultdict(list)
    for n in names:
        by_inst[institution_of(n)].append(n)
    rng = random.Random(seed)
    folds: List[List[str]] = [[] for _ in range(k)]
    i = 0
    for inst in sorted(by_inst):
        group = by_inst[inst][:]
        rng.shuffle(group)
        for n in group:
            folds[i % k].append(n)
            i += 1
    return {"seed": seed, "k": k, "stratified_by": "institution", "folds": [sorted(f) for f in folds]}


def fold_split(folds: Dict, fold: int) -> Dict:
    """The train/val split of fold ``fold``: that fold's cases validate, all others train."""
    k = len(folds["folds"])
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1}, got {fold}")
    val = folds["folds"][fold]
    train = sorted(n for i, f in enumerate(folds["folds"]) if i != fold for n in f)
    return {"seed": folds["seed"], "fold": fold, "k": k, "stratified_by": folds.get("stratified_by"),
            "train": train, "val": sorted(val)}


def save_split(split: Dict, path: PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(split, indent=2) + "\n")


def load_split(path: PathLike) -> Dict:
    """Read a split file and check that no case is on both sides."""
    split = json.loads(Path(path).read_text())
    if "folds" in split:
        raise ValueError(f"{path} is a k-fold file: pass it as --folds with --fold N, not as --split")
    overlap = set(split["train"]) & set(split["val"])
    if overlap:
        raise ValueError(f"Split file {path} puts {sorted(overlap)} in both train and val")
    return split


def select_cases(cases: Sequence[Case], names: Sequence[str]) -> List[Case]:
    """The cases named in a split, in the split's order; a name not found is an error."""
    by_name = {c.name: c for c in cases}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(f"{len(missing)} case(s) of the split are not in the data folder, first: {missing[0]}")
    return [by_name[n] for n in names]


# ---------------------------------------------------------------- datasets

class RandomGamma(v2.Transform):
    """Gamma on the image's intensities (masks untouched): MR contrast differs from scanner to scanner."""

    def __init__(self, gamma: Tuple[float, float] = (0.7, 1.5)):
        super().__init__()
        self.gamma = gamma

    def make_params(self, flat_inputs):
        lo, hi = np.log(self.gamma[0]), np.log(self.gamma[1])
        return {"gamma": float(np.exp(torch.empty(1).uniform_(lo, hi).item()))}

    def transform(self, inpt, params):
        if isinstance(inpt, tv_tensors.Image):
            return v2.functional.adjust_gamma(inpt, params["gamma"])
        return inpt


class RandomDarkInterior(v2.Transform):
    """Darkens the core of a large tumour in every channel, the mask unchanged.

    The annotators of kaggle_3m include a tumour's cystic, necrotic or resected interior in the FLAIR
    abnormality; dark in all three sequences, it looks like fluid, and in ~70 training patients it is
    rare: on the worst out-of-fold cases the segmenter drew the bright rim alone (issue 12). Pixels deeper
    than a random share of the mask's greatest depth (distance to its edge) are scaled down, by a random
    factor, over a soft ramp. Masks under ``min_px`` pixels (at the slice's own size) are left alone.
    """

    def __init__(self, min_px: int = 200, depth: Tuple[float, float] = (0.2, 0.6),
                 factor: Tuple[float, float] = (0.1, 0.8)):
        super().__init__()
        self.min_px, self.depth, self.factor = min_px, depth, factor

    def make_params(self, flat_inputs):
        from scipy.ndimage import distance_transform_edt

        masks = [i for i in flat_inputs if isinstance(i, tv_tensors.Mask)]
        inside = masks[0].reshape(-1, *masks[0].shape[-2:]).amax(0).numpy() > 0 if masks else None
        if inside is None or inside.sum() < self.min_px:
            return {"gain": None}
        depth = distance_transform_edt(inside)
        lo, hi = (float(v) for v in torch.empty(2).uniform_(0, 1))
        start = (self.depth[0] + lo * (self.depth[1] - self.depth[0])) * depth.max()
        weight = np.clip((depth - start) / max(1.0, 0.25 * depth.max()), 0, 1)
        factor = self.factor[0] + hi * (self.factor[1] - self.factor[0])
        return {"gain": torch.from_numpy(1 - weight * (1 - factor)).float()}

    def transform(self, inpt, params):
        if isinstance(inpt, tv_tensors.Image) and params["gain"] is not None:
            return tv_tensors.wrap(inpt * params["gain"].to(inpt.dtype), like=inpt)
        return inpt


def build_augment(scale: float = 1.0, dark_interior: float = 0.0) -> v2.Compose:
    """Joint image/mask augmentation for ~70 training patients: left-right flip, affine, elastic, intensity.

    Geometric transforms move image and mask together (tv_tensors); brightness, contrast and gamma
    touch the image only. Strengths stay within what axial FLAIR slices of other scanners look like;
    they are set for the 256-pixel slices of kaggle_3m, and ``scale`` (training size / 256) shrinks the
    elastic field, which torchvision counts in pixels, so that a slice augmented after its resize to
    the training size is deformed as much in anatomy as one augmented before it. ``dark_interior``: the
    share of slices given :class:`RandomDarkInterior` (tumours of 800 px or more at 256; 0: none).
    """
    dark = [v2.RandomApply([RandomDarkInterior(min_px=round(800 * scale ** 2))], p=dark_interior)] if dark_interior else []
    return v2.Compose(dark + [
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.RandomAffine(degrees=15, translate=(0.08, 0.08), scale=(0.85, 1.15), shear=5)], p=0.8),
        v2.RandomApply([v2.ElasticTransform(alpha=30.0 * scale, sigma=5.0 * scale)], p=0.2),
        v2.RandomApply([v2.ColorJitter(brightness=0.25, contrast=0.25)], p=0.6),
        v2.RandomApply([RandomGamma((0.7, 1.5))], p=0.4),
    ])


class SliceDataset(Dataset):
    """All slices of some cases, held in memory as uint8 (a few hundred MB for the whole set).

    ``task="segmenter"`` yields (image, mask[1,H,W] float 0/1); ``task="classifier"`` yields
    (image, label[1] float: mask not empty). Each slice goes through :func:`brainseg.preprocess.preprocess`,
    the function inference uses, with the augmentation slotted in after the resize (at 128 that is ~4x
    cheaper than augmenting the 256-pixel slice, and on a 2-core machine the loader shares the model's cores).
    """

    def __init__(self, cases: Sequence[Case], cfg: PreprocessConfig, task: str = "segmenter",
                 augment: bool = False, progress: bool = False, dark_interior: float = 0.0):
        if task not in ("segmenter", "classifier"):
            raise ValueError(f"task must be 'segmenter' or 'classifier', got {task!r}")
        self.cfg, self.task = cfg, task
        self.transform = None
        paths = [(c.name, i, m) for c in cases for i, m in zip(c.images, c.masks)]
        if progress:
            from tqdm import tqdm
            paths = tqdm(paths, desc="loading slices", leave=False)
        imgs, masks, self.index = [], [], []
        for case, ip, mp in paths:
            imgs.append(read_image(ip))
            masks.append(read_mask(mp))
            self.index.append((case, slice_number(ip)))
        self.images = np.stack(imgs) if imgs else np.zeros((0, 256, 256, 3), np.uint8)
        self.masks = np.stack(masks) if masks else np.zeros((0, 256, 256), np.uint8)
        self.labels = self.masks.any(axis=(1, 2)).astype(np.int64)
        if augment:
            self.transform = build_augment(cfg.image_size / self.images.shape[1], dark_interior)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        size = self.cfg.image_size
        mask = torch.from_numpy(self.masks[i])[None]
        if mask.shape[-1] != size:
            mask = (resize(mask.float(), size) > 0.5).to(torch.uint8)
        moved = [mask]

        def augment(img: torch.Tensor) -> torch.Tensor:  # one draw moves image and mask together
            # torchvision's colour transforms take float images in [0, 1]
            out, moved[0] = self.transform(tv_tensors.Image(img / 255), tv_tensors.Mask(moved[0]))
            return out.as_subclass(torch.Tensor) * 255

        x = preprocess(self.images[i], self.cfg, augment if self.transform is not None else None)
        mask = moved[0]
        if self.task == "classifier":
            return x, torch.tensor([float(mask.any())])
        return x, mask.as_subclass(torch.Tensor).float()


class BalancedSampler(Sampler[int]):
    """Every tumour slice each epoch plus a fresh random draw of empty slices.

    ``empty_fraction`` is the share of empty slices in an epoch (None keeps them all). Indices
    are shuffled from ``seed + epoch`` and dealt out by rank, so DDP processes see disjoint
    parts; call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, labels: Sequence[int], empty_fraction: Optional[float] = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.labels = np.asarray(labels)
        self.empty_fraction, self.seed, self.rank, self.world = empty_fraction, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_indices(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + self.epoch)
        pos, neg = np.flatnonzero(self.labels == 1), np.flatnonzero(self.labels == 0)
        if self.empty_fraction is not None and len(pos) > 0:
            f = min(max(self.empty_fraction, 0.0), 0.99)
            n_neg = min(len(neg), int(round(len(pos) * f / (1 - f))))
            neg = rng.choice(neg, size=n_neg, replace=False)
        idx = np.concatenate([pos, neg])
        rng.shuffle(idx)
        n = len(idx) - len(idx) % self.world if len(idx) >= self.world else len(idx)
        return idx[:n][self.rank::self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._epoch_indices().tolist())

    def __len__(self) -> int:
        return len(self._epoch_indices())
