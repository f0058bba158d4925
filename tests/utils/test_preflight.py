"""Earlier outputs made another way are found before anything runs (utils/preflight.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from bids_denoise.utils.preflight import conflicting_outputs


def _earlier(tmp_path, method, parameters):
    bids = tmp_path / "bids" / "sub-01" / "dwi"
    bids.mkdir(parents=True)
    dwi = bids / "sub-01_dwi.nii.gz"
    out = tmp_path / "out" / "sub-01" / "dwi"
    out.mkdir(parents=True)
    (out / "sub-01_desc-denoised_dwi.json").write_text(
        json.dumps({"DenoisingMethod": method, "DenoisingParameters": parameters}))
    return SimpleNamespace(dwi_file=dwi), tmp_path / "out"


def test_nested_settings_that_differ_are_named(tmp_path):
    before = {"B0Threshold": 50.0, "Patch2SelfParameters": {"Model": "ols", "PatchRadius": [1, 1, 1]}}
    run, out = _earlier(tmp_path, "Auto", before)
    now = {"B0Threshold": 50.0, "Patch2SelfParameters": {"Model": "ridge", "PatchRadius": [1, 1, 1]}}
    found = conflicting_outputs(run, out, method="Auto", parameters=now)
    assert len(found) == 1 and found[0].endswith("(Patch2SelfParameters.Model differ)")


def test_the_same_settings_or_no_earlier_output_conflict_with_nothing(tmp_path):
    before = {"B0Threshold": 50.0, "Patch2SelfParameters": {"Model": "ols"}}
    run, out = _earlier(tmp_path, "Auto", before)
    assert conflicting_outputs(run, out, method="Auto", parameters=before) == []
    assert conflicting_outputs(run, tmp_path / "elsewhere", method="Auto", parameters=before) == []


def test_another_method_is_named_first(tmp_path):
    run, out = _earlier(tmp_path, "Patch2Self", {"B0Threshold": 50.0})
    found = conflicting_outputs(run, out, method="Auto", parameters={"B0Threshold": 70.0})
    assert found[0].endswith("(DenoisingMethod, B0Threshold differ)")
