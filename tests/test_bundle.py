"""App bundle: schema-valid manifest with a component list, parity recorded, test vectors that the
runtime reproduces, generation matching torch, and fail-closed loading."""

import json
import shutil

import jsonschema
import numpy as np
import pytest

from pocketdiff.cli import main
from pocketdiff.errors import PocketdiffError
from pocketdiff.export.bundle import SCHEMA, write_bundle
from pocketdiff.generate import GenerateConfig, generate_runtime, generate_torch
from pocketdiff.runtime.bundle import load_bundle
from pocketdiff.runtime.rng import initial_latents
from pocketdiff.runtime.sampler import RuntimePipeline


@pytest.fixture(scope="module")
def bundle(tiny_pipeline_dir, tmp_path_factory):
    return write_bundle(tiny_pipeline_dir, tmp_path_factory.mktemp("bundle") / "b", steps=6, guidance=7.5)


def test_manifest(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    jsonschema.validate(m, json.loads(SCHEMA.read_text()))
    assert [(c["role"], c["target"]) for c in m["components"]] == [
        ("text_encoder", "onnx"), ("unet", "onnx"), ("vae_decoder", "onnx")]
    unet = next(c for c in m["components"] if c["role"] == "unet")
    assert [i["name"] for i in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert unet["parity"]["out_sample"]["ok"] and unet["parity"]["out_sample"]["max_abs"] <= 1e-3
    assert len(m["scheduler"]["timesteps"]) == 7  # PNDM: steps + 1
    assert {f["path"] for f in m["files"]} >= {"onnx/unet/model.onnx", "tokenizer/vocab.json", "test_vectors.json"}


def test_vectors_reproduce(bundle):
    v = json.loads((bundle / "test_vectors.json").read_text())
    rt = RuntimePipeline.from_bundle(bundle)
    for t in v["tokens"]:
        assert rt.tokenizer(t["prompt"]).input_ids == t["input_ids"]
    for r in v["initial_latents"]:
        np.testing.assert_array_equal(initial_latents(r["seed"], tuple(r["shape"])).reshape(-1)[:16],
                                      np.array(r["first_values"], np.float32))


def test_generation_matches_torch(bundle, tiny_pipeline_dir):
    cfg = GenerateConfig("a small red circle in the top left", steps=6, guidance=7.5, seed=3)
    a = generate_torch(tiny_pipeline_dir, cfg).image.astype(int)
    b = generate_runtime(RuntimePipeline.from_bundle(bundle), cfg).image.astype(int)
    assert np.abs(a - b).max() <= 2


def test_cli_generate_from_bundle(bundle, tmp_path):
    out = tmp_path / "b.png"
    assert main(["generate", "--bundle", str(bundle), "a red circle", "--steps", "3", "--out", str(out),
                 "--no-progress"]) == 0 and out.is_file()


@pytest.mark.parametrize("damage,match", [
    ("tamper", "fails its sha256 check"),
    ("truncate", "truncated or altered"),
    ("delete", "is missing"),
    ("version", "format_version 2; this pocketdiff reads 1"),
])
def test_fails_closed(bundle, tmp_path, capsys, damage, match):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    f = b / "onnx" / "unet" / "model.onnx"
    if damage == "tamper":
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:1000])
    elif damage == "delete":
        f.unlink()
    else:
        m = json.loads((b / "manifest.json").read_text())
        (b / "manifest.json").write_text(json.dumps({**m, "format_version": 2}))
    with pytest.raises(PocketdiffError, match=match):
        load_bundle(b)
    out = tmp_path / "x.png"
    assert main(["generate", "--bundle", str(b), "a red circle", "--out", str(out), "--no-progress"]) == 2
    assert match.split(";")[0] in capsys.readouterr().err and not out.exists()


def test_unknown_backend(bundle):
    with pytest.raises(PocketdiffError, match="unknown backend 'tflite'; allowed: onnx"):
        RuntimePipeline.from_bundle(bundle, backend="tflite")


def test_latent_after_step_one_matches_torch(bundle, tiny_pipe):
    """The app test vector, recomputed independently with diffusers' scheduler and the torch UNet."""
    import diffusers
    import torch

    v = json.loads((bundle / "test_vectors.json").read_text())["latent_after_step_1"]
    m = json.loads((bundle / "manifest.json").read_text())
    sched = getattr(diffusers, m["scheduler"]["diffusers_class"]).from_config(m["scheduler"]["config"])
    sched.set_timesteps(m["defaults"]["steps"])
    tok = tiny_pipe.tokenizer
    ids = tok(["", v["prompt"]], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = tiny_pipe.text_encoder(ids)[0]
        x = torch.from_numpy(initial_latents(v["seed"], (1, 4, 8, 8))) * sched.init_noise_sigma
        t = sched.timesteps[0]
        eps = tiny_pipe.unet(sched.scale_model_input(torch.cat([x, x]), t), t, hidden).sample
        eps = eps[:1] + v["guidance"] * (eps[1:] - eps[:1])
        x1 = sched.step(eps, t, x).prev_sample
    np.testing.assert_allclose(x1.numpy().reshape(-1)[:16], v["first_values"], atol=v["tolerance"])
