"""Shared fixtures: a synthetic kaggle_3m tree (ellipse 'tumours') and tiny-model checkpoints."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Each test process gets a temp root of its own for the app (app.py puts brainseg_app/ inside it): the cleanup
# tests' sweepers age files in seconds and must not delete another pytest-xdist worker's files.
TEST_TEMP_ROOT = tempfile.mkdtemp(prefix="brainseg-tests-")
os.environ["GRADIO_TEMP_DIR"] = TEST_TEMP_ROOT
torch.set_num_threads(1)

from brainseg.config import ClassifierConfig, SegmenterConfig  # noqa: E402
from brainseg.inference import Predictor  # noqa: E402
from brainseg.models import ResUNet, TumorClassifier  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(TEST_TEMP_ROOT, ignore_errors=True)


SHARED_DATA = ROOT.parent / "shared" / "data" / "lgg" / "kaggle_3m"
TINY_ENCODER = "test_resnet"


def make_slice(rng: np.random.Generator, size: int = 64, tumor: bool = True):
    """A 3-channel 'brain' disc with an optional bright ellipse in FLAIR; returns (image RGB uint8, mask 0/255)."""
    img = np.zeros((size, size, 3), np.uint8)
    c = size // 2
    cv2.circle(img, (c, c), int(size * 0.42), (60, 90, 70), -1)
    img = np.clip(img.astype(np.int16) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
    img[img.sum(-1) < 40] = 0
    mask = np.zeros((size, size), np.uint8)
    if tumor:
        cx, cy = rng.integers(int(size * 0.3), int(size * 0.7), 2)
        ax = (int(rng.integers(size // 12, size // 6)), int(rng.integers(size // 12, size // 6)))
        cv2.ellipse(mask, (int(cx), int(cy)), ax, float(rng.integers(0, 180)), 0, 360, 255, -1)
        img[mask > 0, 1] = 220  # FLAIR hyperintensity
        img[mask > 0, 0] = 110
    return img, mask


def write_case(root: Path, name: str, n_slices: int, rng: np.random.Generator, size: int = 64,
               tumor_slices=None) -> Path:
    """Write one case folder in the kaggle_3m layout (image TIFFs in file order, BGR-swapped for OpenCV)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    tumor_slices = set(range(n_slices // 3, 2 * n_slices // 3 + 1)) if tumor_slices is None else set(tumor_slices)
    for i in range(1, n_slices + 1):
        img, mask = make_slice(rng, size, tumor=i in tumor_slices)
        cv2.imwrite(str(folder / f"{name}_{i}.tif"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / f"{name}_{i}_mask.tif"), mask)
    return folder


SYNTH_CASES = ["TCGA_CS_0001_20000101", "TCGA_CS_0002_20000101", "TCGA_DU_0003_20000101",
               "TCGA_DU_0004_20000101", "TCGA_HT_0005_20000101", "TCGA_HT_0006_20000101"]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """Six synthetic cases of 12 slices (64x64) over three institutions."""
    root = tmp_path_factory.mktemp("kaggle_3m")
    rng = np.random.default_rng(0)
    for name in SYNTH_CASES:
        write_case(root, name, 12, rng)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Untrained tiny segmenter and classifier saved in Hub format: {'segmenter': dir, 'classifier': dir}."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    ResUNet(SegmenterConfig(encoder=TINY_ENCODER, image_size=64)).save_pretrained(d / "segmenter")
    TumorClassifier(ClassifierConfig(encoder=TINY_ENCODER, image_size=64)).save_pretrained(d / "classifier")
    return {"segmenter": d / "segmenter", "classifier": d / "classifier"}


@pytest.fixture(scope="module")
def predictor(tiny_checkpoints):
    """A Predictor over the tiny untrained checkpoints (real models, real rules; their figures mean nothing)."""
    return Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]))


def flair_map(image: np.ndarray) -> np.ndarray:
    """Pixel 'probabilities' that find make_slice's tumours exactly (it paints FLAIR 220 there)."""
    return (np.asarray(image)[..., 1] >= 200).astype(np.float32)


class _Stub(torch.nn.Module):
    """No weights, only a config: stands in for a model inside a real Predictor."""

    def __init__(self, config):
        super().__init__()
        self.config = config


class FakePredictor(Predictor):
    """The real Predictor (thresholds, post-processing, gate, :class:`Prediction`) over stand-in models.

    The one fake of the test suite: it overrides only :meth:`Predictor.run_models`, so every
    decision a test sees is the Predictor's own.

    Args:
        pixel_map: image (HxWx3, input size) -> HxW pixel probabilities; resized to ``image_size``
            as a model would see it (at ``image_size`` == the input's size a mask is exactly the
            map thresholded).
        detection: image -> slice probability, for a fused 'classifier' deciding at
            ``detection_threshold``; None: no classifier, the map's highest pixel decides.
        image_size, threshold, min_component_px: the segmenter config's.
    """

    def __init__(self, pixel_map=flair_map, detection=None, *, image_size: int = 64, threshold: float = 0.5,
                 min_component_px: int = 0, detection_threshold: float = 0.5):
        seg = _Stub(SegmenterConfig(encoder=TINY_ENCODER, image_size=image_size, threshold=threshold,
                                    min_component_px=min_component_px))
        clf = None if detection is None else _Stub(ClassifierConfig(
            encoder=TINY_ENCODER, image_size=image_size, fusion_weights=[1.0, 1.0, 0.0],
            fusion_threshold=detection_threshold))
        super().__init__(seg, clf, precision="fp32", sources={"segmenter": "fake", "classifier": "fake"})
        self.pixel_map, self.detection = pixel_map, detection
        self.calls = 0  # slices seen by the 'models'

    def run_models(self, images, detection_threshold):
        s = self.seg_cfg.image_size
        maps = []
        for im in images:
            m = np.asarray(self.pixel_map(im), np.float32)
            if m.shape != (s, s):
                m = cv2.resize(m, (s, s), interpolation=cv2.INTER_AREA)
            maps.append(torch.from_numpy(m))
        self.calls += len(images)
        det = [float(m.max()) if self.detection is None else float(self.detection(im)) for m, im in zip(maps, images)]
        return np.asarray(det, np.float64), maps


@pytest.fixture()
def fake_predictor():
    """A FakePredictor that finds the synthetic tumours exactly (64 px slices, no classifier)."""
    return FakePredictor()


# ---------------------------------------------------------------- train.py in a subprocess (test_train, test_recipe)

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
TINY = ["--encoder", "test_resnet", "--image-size", "64", "--batch-size", "4", "--workers", "0", "--threads", "1",
        "--max-steps", "2"]
OUTPUTS = ["config.json", "model.safetensors", "metrics.json", "curves.png", "split.json", "last_state.pt"]


def run(args, timeout=240):
    """Run a command in the repo root in its own process group; kill the whole group on timeout."""
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
        proc.communicate()
        raise
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{out[-3000:]}"
    return out


def train(task, data, out, *extra, timeout=240):
    return run([sys.executable, "train.py", task, "--data", str(data), "--out", str(out), *TINY, *extra], timeout)



def needs_shared_data():
    return pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"needs the dev data at {SHARED_DATA}")
