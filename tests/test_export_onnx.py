import json

import numpy as np
import pytest

from pocketdiff.export.components import torch_reference
from pocketdiff.export.parity import ParityError, check_parity
from pocketdiff.runtime.sessions import OnnxSession


def _inputs(name, batch, rng):
    if name == "text_encoder":
        return {"input_ids": rng.integers(0, 1000, (batch, 77)).astype(np.int32)}
    lat = rng.standard_normal((batch, 4, 8, 8)).astype(np.float32)
    if name == "unet":
        return {"sample": lat, "timestep": np.array(321.0, np.float32),
                "encoder_hidden_states": rng.standard_normal((batch, 77, 32)).astype(np.float32)}
    return {"latent_sample": lat}


@pytest.mark.parametrize("name", ["text_encoder", "unet", "vae_decoder"])
@pytest.mark.parametrize("batch", [1, 2])
def test_fp32_parity(tiny_pipe, tiny_onnx_dir, name, batch):
    rng = np.random.default_rng(batch)
    feeds = _inputs(name, batch, rng)
    got = OnnxSession(tiny_onnx_dir / name / "model.onnx").run(feeds)
    want = torch_reference(tiny_pipe, name, feeds)
    for out_name, ref in want.items():
        res = check_parity(f"{name}.{out_name}", ref, got[out_name], "fp32")
        assert res.psnr_db >= 60 and res.max_abs <= 1e-3


def test_layout(tiny_onnx_dir):
    index = json.loads((tiny_onnx_dir / "model_index.json").read_text())
    assert index["_class_name"] == "ORTStableDiffusionPipeline"
    for rel in ("text_encoder/model.onnx", "unet/model.onnx", "vae_decoder/model.onnx", "unet/config.json",
                "vae_decoder/config.json", "tokenizer/vocab.json", "scheduler/scheduler_config.json"):
        assert (tiny_onnx_dir / rel).is_file(), rel
    unet = OnnxSession(tiny_onnx_dir / "unet" / "model.onnx")
    assert [i.name for i in unet.inputs] == ["sample", "timestep", "encoder_hidden_states"]
    assert [o.name for o in unet.outputs] == ["out_sample"] and unet.fixed_batch is None


def test_parity_check_raises():
    ref = np.linspace(-1, 1, 1000, dtype=np.float32)
    with pytest.raises(ParityError, match="PSNR"):
        check_parity("x", ref, ref + 0.01, "fp32")
    assert check_parity("x", ref, ref + 1e-3, "fp16").psnr_db > 35
    with pytest.raises(ParityError, match="shape"):
        check_parity("x", ref, ref[:10])
