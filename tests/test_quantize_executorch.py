"""ExecuTorch int8 through PT2E and XNNPACK's quantizer (export/quantize.py, export/executorch.py).

ExecuTorch's lowering of a quantised graph is slow (the tiny UNet's alone takes minutes on 2 cores), so these tests
run a micro pipeline: the tiny pipeline's text encoder and tokenizer with a one-level UNet (a cross-attention block,
resnets, the time embedding) and a TAESD-style decoder (conv + relu), calibrated by the pipeline's own sampler as the
exporter does. The tiny UNet's int8 is tested on onnxruntime (tests/test_quantize.py)."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from torch import nn

from pocketdiff.architectures.decoder import tiny_decoder_vae
from pocketdiff.errors import PocketdiffError
from pocketdiff.export.executorch import export_executorch_target
from pocketdiff.export.quantize import calibration_prompts, pt2e_program, record_calibration, torch_samples
from pocketdiff.export.torch_session import torch_runtime
from pocketdiff.pipedir import inspect_pipeline
from pocketdiff.runtime.schedulers import get_scheduler_entry

PROMPTS, STEPS = 2, 3


@pytest.fixture(scope="module")
def micro(tiny_pipe, tiny_pipeline_dir):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=tiny_pipe.unet.config.sample_size, in_channels=4, out_channels=4, mid_block_type=None,
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("UpBlock2D",), block_out_channels=(16,),
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=tiny_pipe.text_encoder.config.hidden_size,
        attention_head_dim=4)
    pipe = StableDiffusionPipeline(vae=tiny_decoder_vae(tiny_pipe.vae, channels=8, blocks_per_stage=1),
                                   text_encoder=tiny_pipe.text_encoder, tokenizer=tiny_pipe.tokenizer, unet=unet,
                                   scheduler=tiny_pipe.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    info = inspect_pipeline(tiny_pipeline_dir)
    runtime = torch_runtime(pipe, info.tokenizer_dir, get_scheduler_entry("ddim").config_for(info.scheduler_config))
    calibration = record_calibration(runtime, calibration_prompts(PROMPTS, seed=1), STEPS, guidance=7.5, seed=1)
    return pipe, info, calibration


@pytest.fixture(scope="module")
def records(micro, tmp_path_factory):
    pipe, info, calibration = micro
    folder = tmp_path_factory.mktemp("et") / "executorch"
    return {r["role"]: r for r in export_executorch_target(pipe, info, folder, "fp32", "int8", cfg=True,
                                                          calibration=calibration)}


def test_executorch_int8_static_unet_and_decoder(records):
    for role, batch, samples in (("unet", 2, PROMPTS * STEPS), ("vae_decoder", 1, PROMPTS)):
        r = records[role]
        q = r["meta"]["quantization"]
        assert r["quantization"] == "int8" and q["scheme"] == "pt2e-static" and r["meta"]["static_batch"] == batch
        assert q["calibration"]["samples"] == samples and q["calibration"]["parity"]["samples"] >= 1
        assert r["meta"]["delegated_fraction"] > 0.9
        (results,) = r["parity"].values()
        for res in results.values():  # against PyTorch fp32 on the held-out generation; fp32 ExecuTorch is > 100 dB
            assert res["ok"] and res["min_psnr_db"] == 25 and 30 <= res["psnr_db"] < 70, (role, res)
    text = records["text_encoder"]
    assert text["meta"]["quantization"]["scheme"] == "pt2e-dynamic"
    for res in text["parity"]["batch1"].values():
        assert res["ok"] and res["psnr_db"] < 70


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act, self.proj = nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Linear(8, 8)

    def forward(self, x):  # conv + relu, a residual add and a product the quantizer must leave in float
        h = self.act(self.conv(x)).permute(0, 2, 3, 1)
        return (self.proj(h) + h) * h


def test_pt2e_quantises_conv_and_linear_only():
    example = (torch.randn(1, 4, 6, 6),)
    program = pt2e_program(_Block(), example, [(torch.randn(1, 4, 6, 6),) for _ in range(3)])
    quantized = {n.args[0].target.__name__.split(".")[0] for n in program.graph.nodes  # ops whose output is int8
                 if n.op == "call_function" and "quantize_per_tensor" in str(n.target)
                 and "dequantize" not in str(n.target) and n.args[0].op == "call_function"}
    assert {"relu", "linear"} <= quantized and not quantized & {"add", "mul"}, quantized  # conv + relu: one pattern
    assert {"conv2d", "linear"} <= _reads_dequantized(program)
    dynamic = pt2e_program(_Block(), example, None)  # activations quantised per call: linear layers only
    assert _reads_dequantized(dynamic) == {"linear"}
    assert any("choose_qparams" in str(n.target) for n in dynamic.graph.nodes)


def _reads_dequantized(program) -> set[str]:
    """Ops whose data input (the first argument) is dequantised int8."""
    return {n.target.__name__.split(".")[0] for n in program.graph.nodes if n.op == "call_function" and n.args
            and isinstance(n.args[0], torch.fx.Node) and "dequantize" in str(n.args[0].target)
            and "quantize" not in str(n.target)}


def test_calibration_sample_of_another_batch_is_refused(micro):
    pipe, _, calibration = micro
    unet = calibration.samples("unet")[0]  # the CFG batch of 2
    names = ("sample", "timestep", "encoder_hidden_states")
    example = (torch.zeros(1, 4, 8, 8), torch.tensor(500.0), torch.zeros(1, 77, 32))
    with pytest.raises(PocketdiffError, match=r"calibration sample 0 has sample of shape \(2, 4, 8, 8\); the program "
                                              r"is exported at \(1, 4, 8, 8\)"):
        torch_samples([unet], names, example)
