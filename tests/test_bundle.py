"""App bundle: all three targets from the tiny pipeline; schema-valid manifest with a component list
and parity; test vectors the runtime reproduces; generation on onnxruntime and ExecuTorch matching
torch; optimum loading the onnx/ folder; fail-closed loading; one-line errors with no half bundle."""

import json
import shutil

import jsonschema
import numpy as np
import pytest

from pocketdiff.cli import main
from pocketdiff.errors import PocketdiffError
from pocketdiff.export.bundle import SCHEMA, ExportConfig, write_bundle
from pocketdiff.generate import GenerateConfig, generate_runtime, generate_torch
from pocketdiff.runtime.bundle import load_bundle
from pocketdiff.runtime.conformance import decode
from pocketdiff.runtime.rng import initial_latents
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.runtime.schedulers import SCHEDULERS
from ports import check_all_ports

ALL = ("onnx", "coreml", "executorch")


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    """The suite's all-target export of the tiny pipeline (conftest)."""
    assert _manifest(tiny_bundle)["export"]["targets"] == list(ALL)
    return tiny_bundle


@pytest.fixture(scope="module")
def bundle_fp16(tiny_pipeline_dir, tmp_path_factory):
    return write_bundle(tiny_pipeline_dir, tmp_path_factory.mktemp("bundle16") / "b",
                        ExportConfig(targets=("onnx",), precision="fp16", steps=6, scheduler="ddim"))


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_manifest(bundle):
    m = _manifest(bundle)
    jsonschema.validate(m, json.loads(SCHEMA.read_text()))
    assert [(c["role"], c["target"]) for c in m["components"]] == [
        (role, t) for t in ALL for role in ("text_encoder", "unet", "vae_decoder")]
    onnx_unet = next(c for c in m["components"] if c["role"] == "unet" and c["target"] == "onnx")
    assert [i["name"] for i in onnx_unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert onnx_unet["inputs"][0]["shape"] == ["batch_size", 4, 8, 8] and onnx_unet["meta"]["opset"] >= 18
    assert len(m["scheduler"]["timesteps"]) == 7  # PNDM: steps + 1
    listed = {f["path"] for f in m["files"]}
    assert listed >= {"onnx/unet/model.onnx", "executorch/unet.pte", "coreml/Unet.mlpackage/Manifest.json",
                      "coreml/vocab.json", "tokenizer/vocab.json", "test_vectors.json"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in m["files"])


def test_parity_recorded(bundle):
    """onnx and executorch fp32 pass the 60 dB / 1e-3 bar on every output; onnx at batch 1 and 2."""
    for c in _manifest(bundle)["components"]:
        if c["target"] == "coreml":
            assert c["parity"] is None and "not run" in c["meta"]["parity"]
            continue
        batches = {"onnx": {"batch1", "batch2"}, "executorch": {"batch2" if c["role"] == "unet" else "batch1"}}
        assert set(c["parity"]) == batches[c["target"]], c["name"]
        for results in c["parity"].values():
            for r in results.values():
                assert r["ok"] and r["psnr_db"] >= 60 and r["max_abs"] <= 1e-3, (c["target"], c["role"], r)


def test_executorch_delegation_recorded(bundle):
    meta = {c["role"]: c["meta"] for c in _manifest(bundle)["components"] if c["target"] == "executorch"}
    for role, m in meta.items():
        assert 0 < m["delegated_fraction"] <= 1 and m["delegated_nodes"] > 0, role
    # convs, linears, attention and (rewritten) norms run in XNNPACK: 99% measured on the tiny UNet
    assert meta["unet"]["delegated_fraction"] > 0.95 and meta["vae_decoder"]["delegated_fraction"] > 0.95
    assert "aten_native_group_norm_default" not in meta["unet"]["non_delegated_ops"]


def test_coreml_spec_names_apple_io(bundle):
    """The Core ML packages carry the names, shapes and dtypes apple's Swift pipeline reads."""
    from pocketdiff.export.coreml import validate_package

    io = {  # literal, from apple/ml-stable-diffusion's Swift sources (docs/design/coreml_io.md)
        "TextEncoder": ([("input_ids", [1, 77])], [("last_hidden_state", [1, 77, 32]), ("pooled_outputs", [1, 32])]),
        "Unet": ([("sample", [2, 4, 8, 8]), ("timestep", [2]), ("encoder_hidden_states", [2, 32, 1, 77])],
                 [("noise_pred", [2, 4, 8, 8])]),
        "VAEDecoder": ([("z", [1, 4, 8, 8])], [("image", [1, 3, 32, 32])]),
    }
    for resource, (ins, outs) in io.items():
        path = bundle / "coreml" / f"{resource}.mlpackage"

        def spec(items):
            return [{"name": n, "shape": s, "dtype": "float32"} for n, s in items]

        found = validate_package(path, spec(ins), spec(outs))
        assert found["ops"] > 0 and found["weight_bytes"] > 0
        with pytest.raises(PocketdiffError, match="Apple's Swift pipeline expects"):
            validate_package(path, spec([("x", [1])]), spec(outs))
    assert (bundle / "coreml" / "merges.txt").read_bytes() == (bundle / "tokenizer" / "merges.txt").read_bytes()


def test_coreml_layout_adapters(tiny_pipe):
    """Apple-layout wrappers fed through ``to_apple_feeds`` compute what the common components compute
    (checks the hidden-state transpose, the timestep broadcast and the decoder scale fold on Linux)."""
    import torch

    from pocketdiff.export.components import parity_inputs, torch_reference
    from pocketdiff.export.coreml import apple_io, from_apple_outputs, to_apple_feeds

    factor, original = 0.13, tiny_pipe.vae.config.scaling_factor  # Swift still divides by 0.18215
    tiny_pipe.vae.register_to_config(scaling_factor=factor)
    try:
        for role, (module, inputs, _) in apple_io(tiny_pipe, cfg=True).items():
            feeds = parity_inputs(tiny_pipe, role, inputs[0]["shape"][0])
            apple = to_apple_feeds(role, feeds, factor)
            assert [tuple(i["shape"]) for i in inputs] == [apple[i["name"]].shape for i in inputs]
            with torch.no_grad():
                out = module(*(torch.from_numpy(apple[i["name"]]) for i in inputs))
            names = {"text_encoder": ["last_hidden_state", "pooled_outputs"], "unet": ["noise_pred"],
                     "vae_decoder": ["image"]}[role]
            got = from_apple_outputs(role, dict(zip(names, (o.numpy() for o in (out if isinstance(out, tuple)
                                                                                  else (out,))))))
            for name, ref in torch_reference(tiny_pipe, role, feeds).items():
                np.testing.assert_allclose(got[name], ref, atol=1e-5, err_msg=f"{role}.{name}")
    finally:
        tiny_pipe.vae.register_to_config(scaling_factor=original)


def test_vectors_reproduce(bundle):
    v = json.loads((bundle / "test_vectors.json").read_text())
    rt = RuntimePipeline.from_bundle(bundle)
    for t in v["tokens"]:
        assert rt.tokenizer(t["prompt"]).input_ids == t["input_ids"]
    for r in v["initial_latents"]:
        np.testing.assert_array_equal(initial_latents(r["seed"], tuple(r["shape"])).reshape(-1)[:16],
                                      np.array(r["first_values"], np.float32))
    assert v["timesteps"]["values"] == _manifest(bundle)["scheduler"]["timesteps"]


def test_policy_vectors_match_diffusers(bundle, tiny_pipe):
    """The app test vectors of the bundle's policy (cfg): its call trace, and the latents after step 1 and the
    last step recomputed independently with diffusers' scheduler and the torch modules."""
    import diffusers
    import torch

    v = json.loads((bundle / "test_vectors.json").read_text())["sampler"]
    m = _manifest(bundle)
    assert (v["policy"], v["params"]) == (m["sampler"]["policy"], m["sampler"]["params"]) == ("cfg", {})
    sched = getattr(diffusers, m["scheduler"]["diffusers_class"]).from_config(m["scheduler"]["config"])
    sched.set_timesteps(v["steps"])
    n = len(sched.timesteps)  # PNDM: steps + 1
    assert [(c["step"], c["role"], c["batch"]) for c in v["trace"]] == (
        [(None, "text_encoder", 1)] * 2 + [(i, "unet", 2) for i in range(n)] + [(None, "vae_decoder", 1)])
    tok = tiny_pipe.tokenizer
    ids = tok(["", v["prompt"]], padding="max_length", max_length=77, return_tensors="pt").input_ids
    latents = []
    with torch.no_grad():
        hidden = tiny_pipe.text_encoder(ids)[0]
        x = torch.from_numpy(initial_latents(v["seed"], (1, 4, 8, 8))) * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = tiny_pipe.unet(sched.scale_model_input(torch.cat([x, x]), t), t, hidden).sample
            eps = eps[:1] + v["guidance"] * (eps[1:] - eps[:1])
            x = sched.step(eps, t, x).prev_sample
            latents.append(x.numpy())
    for got, want in ((v["latent_after_step_1"], latents[0]), (v["latent_after_last_step"], latents[-1])):
        np.testing.assert_allclose(want.reshape(-1)[:16], got["first_values"], atol=v["tolerance"])
        assert abs(float(np.abs(want).mean()) - got["mean_abs"]) < v["tolerance"]


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_generation_matches_torch(bundle, tiny_pipeline_dir, backend):
    cfg = GenerateConfig("a small red circle in the top left", steps=6, guidance=7.5, seed=3)
    a = generate_torch(tiny_pipeline_dir, cfg).image.astype(int)
    b = generate_runtime(RuntimePipeline.from_bundle(bundle, backend=backend), cfg).image.astype(int)
    assert np.abs(a - b).max() <= 2


def test_executorch_fixed_batch_is_explained(bundle):
    rt = RuntimePipeline.from_bundle(bundle, backend="executorch")
    with pytest.raises(PocketdiffError, match="fixed batch 2 .*use guidance > 1"):
        rt.generate("a red circle", steps=2, guidance=1.0, seed=0)


def test_cli_generate_from_bundle(bundle, tmp_path):
    for backend in ("onnx", "executorch"):
        out = tmp_path / f"{backend}.png"
        assert main(["generate", "--bundle", str(bundle), "--backend", backend, "a red circle", "--steps", "3",
                     "--out", str(out), "--no-progress"]) == 0 and out.is_file()


def test_optimum_loads_onnx_folder(bundle):
    """optimum's own pipeline class reads the bundle's onnx/ folder and generates."""
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    pipe = ORTStableDiffusionPipeline.from_pretrained(str(bundle / "onnx"))
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=3, guidance_scale=7.5, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all() and image.std() > 0


def test_onnx_fp16(bundle_fp16, bundle, tiny_pipeline_dir):
    m = _manifest(bundle_fp16)
    for c in m["components"]:
        assert c["precision"] == "fp16" and [i["dtype"] for i in c["inputs"]][0] in ("int32", "float32")
        for results in c["parity"].values():
            for r in results.values():
                assert r["ok"] and r["psnr_db"] >= 35 and r["min_psnr_db"] == 35
    import onnx

    weights = onnx.load(str(bundle_fp16 / "onnx" / "unet" / "model.onnx")).graph.initializer
    by_type = {t: sum(len(w.raw_data) for w in weights if w.data_type == t) for t in (1, 10)}  # FLOAT, FLOAT16
    assert by_type[10] > 0.95 * (by_type[1] + by_type[10])  # weights are stored in half precision
    cfg = GenerateConfig("a small red circle in the top left", steps=6, guidance=7.5, seed=3, scheduler="ddim")
    a = generate_torch(tiny_pipeline_dir, cfg).image.astype(int)
    b = generate_runtime(RuntimePipeline.from_bundle(bundle_fp16), cfg).image.astype(int)
    assert np.abs(a - b).mean() < 1.0


def test_bundle_scheduler_is_the_exported_one(bundle_fp16):
    """--scheduler ddim at export: the manifest config names DDIM and the runtime samples with it."""
    m = _manifest(bundle_fp16)
    assert (m["scheduler"]["name"], m["scheduler"]["config"]["_class_name"]) == ("ddim", "DDIMScheduler")
    assert len(m["scheduler"]["timesteps"]) == 6  # PNDM would pin 7
    result = RuntimePipeline.from_bundle(bundle_fp16).generate("a red circle", steps=6, guidance=7.5, seed=0)
    assert result.steps == 6 and result.call_counts() == {"text_encoder": 2, "unet": 6, "vae_decoder": 1}


def test_onnx_int8(tiny_pipeline_dir, tmp_path):
    out = write_bundle(tiny_pipeline_dir, tmp_path / "b", ExportConfig(targets=("onnx",), quantize="int8"))
    for c in _manifest(out)["components"]:
        assert c["quantization"] == "int8"
        for results in c["parity"].values():
            for r in results.values():
                assert r["ok"] and r["min_psnr_db"] == 25 and r["psnr_db"] < 60  # quantised, and honest about it


def test_coreml_fp16_palettized(tiny_pipeline_dir, tmp_path, bundle):
    """Core ML fp16 + 6-bit palettisation: valid Apple-layout packages with far fewer weight bytes."""
    out = write_bundle(tiny_pipeline_dir, tmp_path / "b",
                       ExportConfig(targets=("coreml",), precision="fp16", quantize="palette6"))
    fp32 = {c["role"]: c["meta"] for c in _manifest(bundle)["components"] if c["target"] == "coreml"}
    for c in _manifest(out)["components"]:
        assert (c["precision"], c["quantization"], c["parity"]) == ("fp16", "palette6", None)
        assert c["meta"]["op_counts"].get("constexpr_lut_to_dense", 0) > 0
        # fp16 alone halves the bytes; the UNet's big weights go to 6 bits (tiny matrices under
        # coremltools' 2048-element threshold stay fp16, so the small text encoder saves less)
        limit = 0.3 if c["role"] == "unet" else 0.6
        assert c["meta"]["weight_bytes"] < limit * fp32[c["role"]]["weight_bytes"], c["role"]


@pytest.mark.parametrize("damage,match", [
    ("tamper", "fails its sha256 check"),
    ("truncate", "truncated or altered"),
    ("delete", "is missing"),
    ("version", "format_version 2; this pocketdiff reads 1"),
])
@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_fails_closed(bundle, tmp_path, capsys, damage, match, backend):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    f = b / ("onnx/unet/model.onnx" if backend == "onnx" else "executorch/unet.pte")
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
    assert main(["generate", "--bundle", str(b), "--backend", backend, "a red circle", "--out", str(out),
                 "--no-progress"]) == 2
    assert match.split(";")[0] in capsys.readouterr().err and not out.exists()


def test_tampered_coreml_weights_fail_closed(bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    w = b / "coreml" / "Unet.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(w.read_bytes())
    data[100] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(PocketdiffError, match="Unet.mlpackage/Data/com.apple.CoreML/weights/weight.bin fails"):
        load_bundle(b)


def test_unknown_backend(bundle):
    with pytest.raises(PocketdiffError, match="unknown backend 'tflite'; allowed: onnx, executorch"):
        RuntimePipeline.from_bundle(bundle, backend="tflite")


def test_backend_missing_from_bundle(bundle_fp16):
    with pytest.raises(PocketdiffError, match="has no unet for target 'executorch'; it has: text_encoder/onnx"):
        RuntimePipeline.from_bundle(bundle_fp16, backend="executorch")


@pytest.mark.parametrize("args,message", [
    (["--targets", "onnx,tflite"], "unknown export target 'tflite'"),
    (["--targets", ""], "no export target given"),
    (["--targets", "onnx,onnx"], "export targets repeat"),
    (["--precision", "bf16"], "unknown precision 'bf16'"),
    (["--quantize", "int3"], "unknown quantisation 'int3'"),
    (["--targets", "onnx,executorch", "--quantize", "int8"],
     "quantisation 'int8' on target 'executorch' is static: it needs --calibration N"),
    (["--targets", "coreml", "--quantize", "palette6", "--calibration", "4"],
     "calibration 4 calibrates int8 activations: it needs --quantize int8, got quantize palette6"),
    (["--quantize", "int8", "--calibration", "-2"], "calibration must be a prompt count >= 0, got -2"),
    (["--targets", "onnx", "--quantize", "palette6"],
     "quantisation 'palette6' is not supported for target 'onnx'; onnx supports: int8"),
    (["--steps", "0"], "steps must be an integer >= 1"),
    (["--scheduler", "lms"], "unknown scheduler 'lms'"),
])
def test_bad_export_args(tiny_pipeline_dir, tmp_path, capsys, args, message):
    out = tmp_path / "b"
    assert main(["export", "--pipeline", str(tiny_pipeline_dir), "--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_refuses_missing_component_and_existing_out(copy_pipeline, tmp_path, capsys):
    broken = copy_pipeline("broken")
    shutil.rmtree(broken / "unet")
    out = tmp_path / "b"
    assert main(["export", "--pipeline", str(broken), "--out", str(out), "--no-progress"]) == 2
    assert "unet" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", "--pipeline", str(copy_pipeline("ok")), "--out", str(out), "--no-progress"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_parity_failure_is_one_line_and_leaves_no_bundle(tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    from pocketdiff.export import parity

    monkeypatch.setitem(parity.THRESHOLDS, "fp32", (0.0, -1.0))  # max abs <= -1: nothing passes
    assert main(["export", "--pipeline", str(tiny_pipeline_dir), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: export parity failed for text_encoder.last_hidden_state")
    assert "PSNR" in err and "threshold >= 0.0 dB" in err and "max abs error" in err and "threshold <= -1.0" in err
    assert list(tmp_path.iterdir()) == []


def test_every_app_port_replays_this_bundles_vectors(bundle, ports):
    """The Kotlin and JS cores (and the runtime itself) replay this bundle's recorded run (tests/ports.py)."""
    check_all_ports(ports, bundle, "tiny-cfg", expect=("policy:cfg",))


def test_scheduler_vectors_match_diffusers(bundle):
    """The vectors' every scheduler record (what the ports step on) recomputed with diffusers' own classes."""
    import diffusers
    import torch

    entries = json.loads((bundle / "test_vectors.json").read_text())["schedulers"]
    assert [e["name"] for e in entries] == list(SCHEDULERS)
    for e in entries:
        sched = getattr(diffusers, e["config"]["_class_name"]).from_config(e["config"])
        sched.set_timesteps(e["steps"])
        np.testing.assert_allclose(sched.timesteps.numpy(), e["timesteps"], err_msg=e["name"])
        assert abs(float(sched.init_noise_sigma) - e["init_noise_sigma"]) < 1e-4 * max(1.0, e["init_noise_sigma"])
        for r in e["records"]:
            t = sched.timesteps[r["index"]]
            sample = torch.from_numpy(decode(r["sample"]))
            scaled = sched.scale_model_input(sample, t)
            prev = sched.step(torch.from_numpy(decode(r["model_output"])), t, sample).prev_sample
            for got, want in ((scaled, r["scaled_sample"]), (prev, r["prev_sample"])):
                np.testing.assert_allclose(got.numpy(), decode(want), atol=1e-4, rtol=1e-4,
                                           err_msg=f"{e['name']} step {r['index']}")
