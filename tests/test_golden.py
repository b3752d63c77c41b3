"""Golden tests: the shipped models on the shipped example slices (real slices of v1's validation cases,
with masks; the shipped models trained on all 88 development cases, these included),
and on their own validation cases against the figures they ship with (models/segmenter/eval_val.json).

Expected figures are what the shipped models give (bf16 and fp32 agree to 0.001), less a margin of
0.01 Dice; re-measure them when models/ changes:

    python tests/test_golden.py
"""
import json
import os
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from brainseg.images import load_mask
from brainseg.inference import Predictor
from brainseg.metrics import dice_score

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.png") if not p.stem.endswith("_mask"))
MARGIN = 0.01

# example -> Dice of the shipped models (measured 2026-12-06, the v4 models; fp32 and bf16 agree to 0.001)
OBSERVED_DICE = {
    "TCGA_CS_4943_20000902_17": 0.968,
    "TCGA_DU_6408_19860521_31": 0.952,
    "TCGA_DU_8162_19961029_15": 0.933,
    "TCGA_FG_A4MT_20020212_16": 0.968,
    "TCGA_HT_7473_19970826_16": 0.927,
}
TUMOUR_FREE = {"TCGA_CS_6188_20010812_11", "TCGA_DU_7306_19930512_28", "TCGA_HT_7874_19950902_7"}

pytestmark = pytest.mark.skipif(not (ROOT / "models" / "segmenter" / "config.json").exists() or not EXAMPLES,
                                reason="needs the shipped models in models/ and the slices in examples/")


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_sources()  # the shipped defaults


def test_every_example_has_an_expected_figure():
    assert {p.stem for p in EXAMPLES} == set(OBSERVED_DICE) | TUMOUR_FREE


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_shipped_models_on_example(predictor, path):
    truth = load_mask(path.with_name(path.stem + "_mask.png"))
    pred = predictor.predict(path)              # read in file channel order, as a user would
    if path.stem in OBSERVED_DICE:
        assert pred.detected and pred.probability > 0.95
        dice = dice_score(pred.mask, truth)
        assert dice >= OBSERVED_DICE[path.stem] - MARGIN, dice
    else:
        # v1's classifier alone gave 0.86 on TCGA_CS_6188_20010812_11 (a false alarm); the fused detection
        # of v1 and of v2 says 0.09 there.
        assert not truth.any()
        assert not pred.detected and pred.probability < 0.15
        assert pred.tumor_area_px == 0


RULES = ROOT / "models" / "rules.json"


@pytest.mark.skipif(not RULES.exists(), reason="models/ has no rules.json (models calibrated on one split)")
def test_the_shipped_configs_hold_the_rules_of_rules_json():
    """models/rules.json is the record of what calibrate chose; the configs must hold exactly that."""
    from brainseg.calibrate import RULE_FIELDS, read_rules

    rules = read_rules(str(RULES))
    for kind, fields in RULE_FIELDS.items():
        cfg = json.loads((ROOT / "models" / kind / "config.json").read_text())
        for k in fields:
            assert cfg[k] == pytest.approx(rules[kind][k], abs=1e-6) if isinstance(cfg[k], (float, list)) \
                else cfg[k] == rules[kind][k], (kind, k)


# ---------------------------------------------------------------- the shipped figures, reproduced

EVAL_VAL = ROOT / "models" / "segmenter" / "eval_val.json"
SUBSET_CASES = 3  # the smallest validation cases (62 slices, ~30 s on 2 busy cores); BRAINSEG_FULL_REGRESSION=1: all
TOLERANCE = 0.005


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir() or not EVAL_VAL.exists(),
                    reason=f"needs the dev data at {SHARED_DATA} and {EVAL_VAL.relative_to(ROOT)} (models trained on "
                           "all 88 cases ship eval_oof.json instead: the fold models' figures, which their own "
                           "weights cannot reproduce; the example table above still pins them)")
def test_shipped_models_reproduce_their_eval_val_figures():
    """brainseg.evaluate with the shipped models gives the per-case Dice of eval_val.json within 0.005, on the
    SUBSET_CASES smallest validation cases (by slice count); on all of them, with BRAINSEG_FULL_REGRESSION=1,
    the summary figures (per-case Dice mean, AUROC, accuracy, sensitivity, specificity) too."""
    from brainseg.evaluate import evaluate

    shipped = json.loads(EVAL_VAL.read_text())
    full = os.environ.get("BRAINSEG_FULL_REGRESSION") == "1"
    by_size = sorted(shipped["per_case"], key=lambda c: (shipped["per_case"][c]["slices"], c))
    cases = by_size if full else by_size[:SUBSET_CASES]
    p = Predictor.from_sources(precision=shipped.get("precision", "auto"))
    r = evaluate(SHARED_DATA, p, split={"train": [], "val": cases})
    assert sorted(r["per_case"]) == sorted(cases)
    for c in cases:
        got, want = r["per_case"][c], shipped["per_case"][c]
        assert got["slices"] == want["slices"] and got["gt_voxels"] == want["gt_voxels"], c
        if not full:
            assert got["dice"] == pytest.approx(want["dice"], abs=TOLERANCE), c
    if full:
        assert r["seg"]["dice_per_case_mean"] == pytest.approx(shipped["seg"]["dice_per_case_mean"], abs=TOLERANCE)
        for k in ("auroc", "accuracy", "sensitivity", "specificity"):
            assert r["det"][k] == pytest.approx(shipped["det"][k], abs=TOLERANCE), k


def measure():
    """Print each example's probability, area and Dice with the shipped models (to update the table)."""
    p = Predictor.from_sources()
    for path in EXAMPLES:
        pred = p.predict(path)
        truth = load_mask(path.with_name(path.stem + "_mask.png"))
        print(f"{path.stem}: p={pred.probability:.4f} area={pred.tumor_area_px} dice={dice_score(pred.mask, truth):.4f}")


if __name__ == "__main__":
    measure()
