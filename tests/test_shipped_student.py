"""The quality gate on the shipped student bundle (made by recipes/toy-full.toml, committed under
pocketdiff/toyworld/assets/student), and the check that `pocketdiff eval` run on its own reproduces the
numbers the build's report showed (docs/build_toy_full.json)."""

import json
from pathlib import Path

import pytest

from pocketdiff.cli import main
from pocketdiff.toyworld import TOY_TEACHER_DIR

ROOT = Path(__file__).parents[1]
STUDENT = Path(TOY_TEACHER_DIR) / "student"
BASELINE = ROOT / "benchmarks" / "baselines" / "toy.json"
RECORD = ROOT / "docs" / "build_toy_full.json"


def test_gate_passes_the_shipped_student_and_reproduces_its_build_eval(tmp_path):
    out = tmp_path / "gate.json"
    assert main(["regress", "--bundle", str(STUDENT), "--baseline", str(BASELINE), "--json", str(out)]) == 0
    got = json.loads(out.read_text())["result"]
    base, record = json.loads(BASELINE.read_text()), json.loads(RECORD.read_text())
    built = record["eval"]["student"]  # what the build's eval stage wrote and its report showed
    assert (got["prompts"], got["n"], got["seed"], got["steps"], got["guidance"]) == (
        built["prompts"], built["n"], built["seed"], built["steps"], built["guidance"]) == (
        base["prompts"], base["n"], base["seed"], built["steps"], base["guidance"])
    # the same bundle, prompts and seeds: the same images up to onnxruntime's CPU kernels
    assert got["fid"] == pytest.approx(built["fid"], rel=0.02)
    assert got["clip_score"] == pytest.approx(built["clip_score"], rel=0.01)
    assert got["attribute_accuracy"] == pytest.approx(built["attribute_accuracy"], abs=0.005)


def test_gate_fails_the_shipped_student_with_a_zeroed_decoder(tmp_path):
    """The committed baseline catches a degraded copy of the shipped bundle: its ONNX decoder's conv weights
    zeroed (the manifest's checksums rewritten, so only quality can fail it)."""
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from pocketdiff.runtime.bundle import sha256_file

    bad = tmp_path / "bad"
    shutil.copytree(STUDENT, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    path = next(c["path"] for c in manifest["components"] if c["role"] == "vae_decoder" and c["target"] == "onnx")
    model = onnx.load(str(bad / path))
    for init in model.graph.initializer:  # the conv weights (shape constants and biases stay)
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim >= 2:
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(w), init.name))
    onnx.save(model, str(bad / path))
    for entry in manifest["files"]:
        entry["sha256"], entry["bytes"] = sha256_file(bad / entry["path"]), (bad / entry["path"]).stat().st_size
    (bad / "manifest.json").write_text(json.dumps(manifest, indent=1))
    out, base = tmp_path / "gate.json", tmp_path / "base.json"
    # the committed bounds on 200 of the same prompts (the degraded images fail them at any n)
    base.write_text(json.dumps({**json.loads(BASELINE.read_text()), "n": 200}))
    assert main(["regress", "--bundle", str(bad), "--baseline", str(base), "--json", str(out)]) == 1
    failed = {c["metric"] for c in json.loads(out.read_text())["checks"] if not c["ok"]}
    assert {"fid", "attribute_accuracy"} <= failed
