"""Golden tests: the shipped models, in fp32, against the figures pinned in tests/golden.json.

- every example slice (examples/*.png, with masks): its tumour probability and Dice;
- the example case (examples/*.zip, 13 slices with masks) through whole-case analysis (the 3-D case rule
  included): its case Dice, tumour volume and tumour slices;
- with the dev data, the smallest validation cases of splits/lgg_dev_seed42.json through brainseg.evaluate.

The figures are what the shipped models give in fp32, pinned to MARGIN (fp32 runs agree to about 1e-6 on
one machine; the margin covers other CPUs' kernels). golden.json lives in tests/, so shipping new models
(scripts/ship_models.sh) leaves it in place and these tests fail until it is re-measured:

    python tests/test_golden.py          # rewrites tests/golden.json with the models in models/
"""
import json
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from brainseg.case_analysis import analyze_case, summarize
from brainseg.case_io import load_case
from brainseg.evaluate import evaluate
from brainseg.images import load_mask
from brainseg.inference import Predictor
from brainseg.metrics import dice_score

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).with_name("golden.json")
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.png") if not p.stem.endswith("_mask"))
EXAMPLE_CASE = next((ROOT / "examples").glob("*.zip"), None)
SPLIT = ROOT / "splits" / "lgg_dev_seed42.json"
DEV_CASES = 3  # the smallest validation cases (about 60 slices): ~20 s on 2 busy cores
MARGIN = 0.002

pytestmark = pytest.mark.skipif(not (ROOT / "models" / "segmenter" / "config.json").exists() or not EXAMPLES,
                                reason="needs the shipped models in models/ and the slices in examples/")


def shipped() -> Predictor:
    return Predictor.from_sources(precision="fp32")


def measure_example(predictor: Predictor, path: Path) -> dict:
    pred = predictor.predict(path)  # read in file channel order, as a user would
    truth = load_mask(path.with_name(path.stem + "_mask.png"))
    return {"probability": round(pred.probability, 6), "detected": pred.detected, "truth_has_tumour": bool(truth.any()),
            "dice": round(dice_score(pred.mask, truth), 6)}


def measure_case(predictor: Predictor) -> dict:
    s = summarize(analyze_case(predictor, load_case(EXAMPLE_CASE)))
    return {"file": EXAMPLE_CASE.name, "dice": round(s["dice"], 6), "tumor_volume_voxels": s["tumor_volume_voxels"],
            "tumor_slices": s["tumor_slices"]}


def dev_cases() -> list:
    val = json.loads(SPLIT.read_text())["val"]
    sizes = {c: len(list((SHARED_DATA / c).glob("*_mask.tif"))) for c in val}
    return sorted(val, key=lambda c: (sizes[c], c))[:DEV_CASES]


def measure_dev(predictor: Predictor) -> dict:
    r = evaluate(SHARED_DATA, predictor, split={"train": [], "val": dev_cases()})
    return {c: {"dice": round(v["dice"], 6), "slices": v["slices"], "gt_voxels": v["gt_voxels"]}
            for c, v in r["per_case"].items()}


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def fp32_predictor() -> Predictor:
    return shipped()


def test_every_example_has_a_pinned_figure(golden):
    assert {p.stem for p in EXAMPLES} == set(golden["examples"])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_shipped_models_on_example(fp32_predictor, golden, path):
    want, got = golden["examples"][path.stem], measure_example(fp32_predictor, path)
    assert got["detected"] == want["detected"] == want["truth_has_tumour"]  # every example is answered right
    assert got["probability"] == pytest.approx(want["probability"], abs=MARGIN)
    assert got["dice"] == pytest.approx(want["dice"], abs=MARGIN)


@pytest.mark.skipif(EXAMPLE_CASE is None, reason="no example case zip in examples/")
def test_shipped_models_on_the_example_case(fp32_predictor, golden):
    want, got = golden["example_case"], measure_case(fp32_predictor)
    assert got["dice"] == pytest.approx(want["dice"], abs=MARGIN)
    assert got["tumor_slices"] == want["tumor_slices"]
    assert got["tumor_volume_voxels"] == pytest.approx(want["tumor_volume_voxels"], rel=MARGIN)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"needs the dev data at {SHARED_DATA}")
def test_shipped_models_on_the_smallest_validation_cases(fp32_predictor, golden):
    want, got = golden["dev_cases"], measure_dev(fp32_predictor)
    assert sorted(got) == sorted(want) == sorted(dev_cases())
    for c in want:
        assert got[c]["slices"] == want[c]["slices"] and got[c]["gt_voxels"] == want[c]["gt_voxels"], c
        assert got[c]["dice"] == pytest.approx(want[c]["dice"], abs=MARGIN), c


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


def main() -> int:
    """Measure every pinned figure with the models in models/ (fp32) and rewrite tests/golden.json."""
    p = shipped()
    out = {"precision": "fp32", "margin": MARGIN,
           "models": {k: v["weights_sha256"] for k, v in p.describe().items()},
           "examples": {path.stem: measure_example(p, path) for path in EXAMPLES},
           "example_case": measure_case(p) if EXAMPLE_CASE else None}
    if SHARED_DATA.is_dir():
        out["dev_cases"] = measure_dev(p)
    elif GOLDEN.exists():
        out["dev_cases"] = json.loads(GOLDEN.read_text()).get("dev_cases")
        print(f"no dev data at {SHARED_DATA}: dev_cases kept from {GOLDEN.name}", file=sys.stderr)
    GOLDEN.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
