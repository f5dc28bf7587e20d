"""The runtime draws the same pixels as before the step-policy refactor: the shipped student (onnxruntime and
ExecuTorch), the toy teacher's ONNX bundle (PNDM and DDIM, with and without CFG) and a guidance-embedded
tiny bundle, each for fixed prompts and seeds (``tests/golden.py``), against the images
``scripts/record_runtime_golden.py`` recorded at the commits named in the file (the student cases again
when a new student ships)."""

import json
from pathlib import Path

import numpy as np
import pytest

from golden import CASES, export_golden_bundles, run_case

GOLDEN = Path(__file__).parent / "data" / "runtime_golden.npz"


@pytest.fixture(scope="module")
def golden_bundles(tmp_path_factory):
    return export_golden_bundles(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_runtime_images_equal_the_recorded_ones(golden_bundles, case):
    recorded = np.load(GOLDEN)
    assert case.key in json.loads(str(recorded["meta"]))["cases"]
    got = run_case(case, golden_bundles)
    want = recorded[case.key]
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"{case.key}: {int((got != want).any(-1).sum())} pixels differ"
