"""The one sampler loop and its step policies: a policy written here, in tests/, runs on the tiny bundle without
touching ``sampler.py`` and bench composes its end to end from its trace; manifests name their policy (an unknown
one is one error line); sessions share one protocol; a progress callback cancels; the torch sessions run the same
loop as the bundle."""

import json
import shutil

import numpy as np
import pytest

from pocketdiff.benchmarks.compare import compare, parse_side
from pocketdiff.cli import main
from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime import POLICIES, Cancelled, RuntimePipeline, Session, ShapeSession, TensorSpec
from pocketdiff.runtime.policies import CFGPolicy, make_policy, register_policy


class ReuseEveryOther(CFGPolicy):
    """The extension point's proof: reuse the previous step's model output on every other step."""

    name = "test_reuse_every_other"

    def step(self, run, i, t, sample, state):
        if i % 2 == 1:
            return state["previous"]
        state["previous"] = super().step(run, i, t, sample, state)
        return state["previous"]


@pytest.fixture
def reuse_policy():  # function scope: a later test must see only the built-in policies
    register_policy(ReuseEveryOther)
    yield ReuseEveryOther.name
    POLICIES.pop(ReuseEveryOther.name)


def test_a_policy_from_the_tests_runs_with_half_the_unet_calls(tiny_bundle, reuse_policy, tmp_path):
    plain = RuntimePipeline.from_bundle(tiny_bundle).generate("a red circle", steps=6, guidance=7.5, seed=0,
                                                              scheduler="ddim")
    rt = RuntimePipeline.from_bundle(tiny_bundle, policy=make_policy(reuse_policy))
    res = rt.generate("a red circle", steps=6, guidance=7.5, seed=0, scheduler="ddim")
    assert [(c.step, c.batch) for c in res.trace if c.role == "unet"] == [(0, 2), (2, 2), (4, 2)]
    assert plain.call_counts()["unet"] == 2 * res.call_counts()["unet"] == 6
    assert res.image.shape == plain.image.shape and not np.array_equal(res.image, plain.image)
    # bench compare composes each side's end to end from its own trace and medians
    sides = [parse_side(f"bundle={tiny_bundle},steps=6"), parse_side(f"bundle={tiny_bundle},steps=6,policy={reuse_policy}")]
    out = compare(sides, threads=1, warmup=1, repeat=3)
    e = out["end_to_end"]
    assert e["A"]["calls"] == {"text_encoder@1": 2, "unet@2": 7, "vae_decoder@1": 1}  # PNDM: 6 steps + 1
    assert e["B"]["calls"] == {"text_encoder@1": 2, "unet@2": 4, "vae_decoder@1": 1}
    med = {(r["component"], r["batch"]): r["B"]["median_ms"] for r in out["components"]}
    assert e["B"]["e2e_ms"] == pytest.approx(2 * med[("text_encoder", 1)] + 4 * med[("unet", 2)]
                                             + med[("vae_decoder", 1)])


def _edit_manifest(bundle, tmp_path, change):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    change(m)
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def test_manifest_names_the_policy_and_old_bundles_keep_their_behaviour(tiny_bundle, tmp_path):
    assert json.loads((tiny_bundle / "manifest.json").read_text())["sampler"] == {"policy": "cfg", "params": {}}
    old = _edit_manifest(tiny_bundle, tmp_path, lambda m: m.pop("sampler"))  # written before policies
    a = RuntimePipeline.from_bundle(tiny_bundle).generate("a red circle", steps=3, guidance=7.5, seed=1)
    b = RuntimePipeline.from_bundle(old).generate("a red circle", steps=3, guidance=7.5, seed=1)
    assert np.array_equal(a.image, b.image) and [c.to_dict(False) for c in a.trace] == [c.to_dict(False) for c in b.trace]


@pytest.mark.parametrize("sampler,message", [
    ({"policy": "lcm", "params": {}}, "unknown sampler policy 'lcm'; allowed: cfg, guidance_embedded"),
    ({"policy": "cfg", "params": {"period": 2}}, "sampler policy 'cfg' has no param 'period'; allowed: none"),
])
def test_unknown_policy_or_param_is_one_error_line(tiny_bundle, tmp_path, capsys, sampler, message):
    bad = _edit_manifest(tiny_bundle, tmp_path, lambda m: m.update(sampler=sampler))
    with pytest.raises(PocketdiffError, match=message):
        RuntimePipeline.from_bundle(bad)
    assert main(["generate", "--bundle", str(bad), "a red circle", "--out", str(tmp_path / "x.png"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and not (tmp_path / "x.png").exists()


def test_sessions_share_one_protocol(tiny_bundle, tiny_pipe):
    from pocketdiff.export.torch_session import torch_runtime
    from pocketdiff.runtime.bundle import load_bundle

    for backend in ("onnx", "executorch"):
        for role, s in RuntimePipeline.from_bundle(tiny_bundle, backend).sessions.items():
            assert isinstance(s, Session) and s.inputs and s.outputs
            assert s.fixed_batch == (None if backend == "onnx" else 2 if role == "unet" else 1)
    m = load_bundle(tiny_bundle).manifest
    torch_rt = torch_runtime(tiny_pipe, tiny_bundle / "tokenizer", m["scheduler"]["config"])
    assert all(isinstance(s, Session) for s in torch_rt.sessions.values())
    shape = ShapeSession([TensorSpec("x", ("batch_size", 3), "float32")], [TensorSpec("y", ("batch_size", 5), "int64")])
    assert shape.run({"x": np.ones((2, 3))})["y"].shape == (2, 5)
    # the same loop on the torch modules draws the bundle's image (the runtime's parity reference)
    a = torch_rt.generate("a red circle", steps=4, guidance=7.5, seed=2).image.astype(int)
    b = RuntimePipeline.from_bundle(tiny_bundle).generate("a red circle", steps=4, guidance=7.5, seed=2).image
    assert np.abs(a - b.astype(int)).max() <= 2


def test_progress_callback_cancels(tiny_bundle):
    rt = RuntimePipeline.from_bundle(tiny_bundle)
    seen = []

    def stop_after_two(done, total):
        seen.append(done)
        return done < 2

    with pytest.raises(Cancelled, match="after step 2 of 7"):
        rt.generate("a red circle", steps=6, guidance=7.5, seed=0, callback=stop_after_two)
    assert seen == [1, 2]
    assert rt.generate("a red circle", steps=2, guidance=7.5, seed=0, callback=lambda d, t: None).steps == 3
