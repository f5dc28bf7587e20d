"""SD1.5 architecture with random weights: ONNX export, and one UNet step in onnxruntime vs torch.

Slow (several minutes, ~10 GB RAM peak): run with `make test-slow`. Export and onnxruntime run in
separate processes, as ../shared/ENV.md advises for the SD1.5 UNet.
"""

import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ORT_STEP = """
import sys, numpy as np
from pocketdiff.runtime.backends import OnnxSession
feeds = dict(np.load(sys.argv[2]))
out = OnnxSession(sys.argv[1], threads=2).run(feeds)["out_sample"]
np.save(sys.argv[3], out)
"""


def test_sd15_onnx_export_and_unet_parity(tmp_path):
    import torch
    from diffusers import UNet2DConditionModel

    from pocketdiff.export.parity import check_parity

    pipe_dir, onnx_dir = tmp_path / "sd15", tmp_path / "sd15_onnx"
    run = [sys.executable, "-m", "pocketdiff.cli"]
    subprocess.run(run + ["create", "--arch", "sd15", "--out", str(pipe_dir)], check=True)
    subprocess.run(run + ["export", "--pipeline", str(pipe_dir), "--out", str(onnx_dir)], check=True)
    for comp in ("text_encoder", "unet", "vae_decoder"):
        assert (onnx_dir / comp / "model.onnx").is_file()

    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 64, 64)).astype(np.float32),
        "timestep": np.array(500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 768)).astype(np.float32),
    }
    np.savez(tmp_path / "feeds.npz", **feeds)
    unet = UNet2DConditionModel.from_pretrained(str(pipe_dir / "unet")).eval()
    with torch.no_grad():
        want = unet(*(torch.from_numpy(feeds[k]) for k in ("sample", "timestep", "encoder_hidden_states"))).sample
    del unet
    subprocess.run([sys.executable, "-c", ORT_STEP, str(onnx_dir / "unet" / "model.onnx"),
                    str(tmp_path / "feeds.npz"), str(tmp_path / "out.npy")], check=True)
    got = np.load(tmp_path / "out.npy")
    result = check_parity("sd15.unet", want.numpy(), got, "fp32")  # raises below 60 dB or above 1e-3
    print(f"SD1.5 UNet ONNX parity: max abs {result.max_abs:.2e}, PSNR {result.psnr_db:.1f} dB")
