"""Efficient decoders: L1-norm channel pruning (width 1 is the identity, 0.5 keeps the teacher's strongest
channels), the TAESD-style option, diffusers save/load and pipeline loading, export with parity; stage
distill-decoder: a 2-step smoke run with resume, the latent cache reused on a second run."""

from dataclasses import replace

import pytest
import torch

from pocketdiff.architectures.decoder import PrunedDecoderAutoencoderKL, prune_decoder, pruned_widths, tiny_decoder_vae
from pocketdiff.errors import PocketdiffError


def test_prune_width_one_is_identity_and_half_keeps_strongest(tiny_pipe):
    vae = tiny_pipe.vae.eval()
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = vae.decode(z).sample
        assert torch.equal(prune_decoder(vae, 1.0).decode(z).sample, ref)
        half = prune_decoder(vae, 0.5)
        assert half.decode(z).sample.shape == ref.shape
    assert half.config.decoder_block_out_channels == [c // 2 for c in vae.config.block_out_channels]
    # a ResNet's hidden channels are their own space: conv1 keeps its filters with the largest L1 norms, in order
    t1, s1 = vae.decoder.mid_block.resnets[0].conv1.weight, half.decoder.mid_block.resnets[0].conv1
    keep = torch.sort(torch.topk(t1.abs().flatten(1).sum(1), s1.out_channels).indices).values
    stream = [i for i in range(t1.shape[1]) if any(torch.equal(half.decoder.conv_in.weight[j], vae.decoder.conv_in.weight[i])
                                                  for j in range(half.decoder.conv_in.out_channels))]
    assert torch.equal(s1.weight, t1[keep][:, stream])  # output rows by L1, input columns = the kept stream
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(half.decoder) < 0.35 * n(vae.decoder) and torch.equal(half.encoder.conv_in.weight, vae.encoder.conv_in.weight)


def test_pruned_widths_and_bad_width():
    assert pruned_widths([128, 256, 512, 512], 32, 0.5) == ([64, 128, 256, 256], 32)
    assert pruned_widths([32, 64, 64], 16, 0.25) == ([8, 16, 16], 8)
    with pytest.raises(PocketdiffError, match="width multiplier must be in \\(0, 1\\], got 0"):
        pruned_widths([32], 8, 0)


def test_decoders_save_load_and_run_in_the_pipeline(tiny_pipe, tmp_path):
    from diffusers import StableDiffusionPipeline

    from pocketdiff.pipedir import StageRecord, load_pipeline, write_pipeline

    for kind, vae in (("pruned", prune_decoder(tiny_pipe.vae, 0.5)), ("tiny", tiny_decoder_vae(tiny_pipe.vae, 16, 1))):
        pipe = StableDiffusionPipeline(**{**tiny_pipe.components, "vae": vae}, requires_safety_checker=False)
        folder = write_pipeline(pipe, tmp_path / kind, [StageRecord("test", {})])
        back = load_pipeline(folder)
        assert type(back.vae) is type(vae)
        z = torch.randn(1, 4, 8, 8)
        with torch.no_grad():
            assert torch.allclose(back.vae.decode(z).sample, vae.eval().decode(z).sample, atol=1e-6)
        img = back("a red circle", num_inference_steps=2, guidance_scale=2.0, output_type="np").images
        assert img.shape == (1, 32, 32, 3)
    assert isinstance(load_pipeline(tmp_path / "pruned").vae, PrunedDecoderAutoencoderKL)


# the pruned decoder has the teacher decoder's ops (exported on every target by test_bundle); the TAESD-style
# one has its own, so it goes to ExecuTorch too (in make test-slow, for make test's time, as does the pruned one)
@pytest.mark.parametrize("kind,targets", [pytest.param("pruned", ("onnx",), marks=pytest.mark.slow), ("tiny", ("onnx",)),
                                          pytest.param("tiny", ("executorch",), marks=pytest.mark.slow)])
def test_decoders_export_with_parity(tiny_pipe, tmp_path, kind, targets):
    from diffusers import StableDiffusionPipeline

    from pocketdiff.export.bundle import ExportConfig, write_bundle
    from pocketdiff.pipedir import StageRecord, write_pipeline
    from pocketdiff.runtime.bundle import load_bundle

    vae = prune_decoder(tiny_pipe.vae, 0.5) if kind == "pruned" else tiny_decoder_vae(tiny_pipe.vae, 16, 1)
    pipe = StableDiffusionPipeline(**{**tiny_pipe.components, "vae": vae}, requires_safety_checker=False)
    folder = write_pipeline(pipe, tmp_path / "p", [StageRecord("test", {})])
    bundle = write_bundle(folder, tmp_path / "b", ExportConfig(targets=targets, guidance=2.0))
    import json

    m = json.loads((bundle / "manifest.json").read_text())
    dec = [c for c in m["components"] if c["role"] == "vae_decoder"]
    assert {c["target"] for c in dec} == set(targets)
    for c in dec:  # write_bundle raises below the bar; the recorded figures say by how much it passed
        for results in c["parity"].values():
            assert all(r["ok"] and r["psnr_db"] >= 60 for r in results.values()), (c["target"], results)
    load_bundle(bundle)  # checksums verify


def test_distill_decoder_smoke_resume_and_cache(tiny_pipeline_dir, tmp_path):
    from pocketdiff.distill.decoder import DecoderDistillConfig, distill_decoder
    from pocketdiff.loop import Interrupted
    from pocketdiff.pipedir import read_train_log
    from pocketdiff.pipedir import load_pipeline, read_history

    cfg = DecoderDistillConfig(steps=2, batch_size=2, n_generated=4, gen_steps=2, gen_batch=4, n_encoded=4,
                               guidance=2.0, perceptual="none", checkpoint_every=1)
    work, out = tmp_path / "work", tmp_path / "out"
    with pytest.raises(Interrupted):
        distill_decoder(tiny_pipeline_dir, out, cfg, work, stop_after=1, progress=False)
    assert not out.exists() and (work / "latents.safetensors").is_file()
    cached = (work / "latents.safetensors").stat().st_mtime_ns
    distill_decoder(tiny_pipeline_dir, out, cfg, work, progress=False)
    assert (work / "latents.safetensors").stat().st_mtime_ns == cached  # not recomputed
    summary = read_history(out)[-1].config["summary"]
    assert summary["latent_cache_reused"] and summary["latents"] == 8 and summary["resumed_from"] == 1
    assert summary["decoder_params_student"] < summary["decoder_params_teacher"]
    log = read_train_log(work / "train")
    assert [r["step"] for r in log] == [2] and {"l1", "l2", "perceptual", "loss"} <= set(log[-1])
    pipe = load_pipeline(out)
    assert pipe.vae.config.decoder_block_out_channels == [8, 16, 16]
    assert type(pipe.scheduler).__name__ == type(load_pipeline(tiny_pipeline_dir).scheduler).__name__
    # another student shares the cache from a different workdir, and its own settings reach the model
    tiny = replace(cfg, kind="tiny", tiny_channels=8, tiny_blocks=1, steps=1, lr_schedule="constant")
    distill_decoder(tiny_pipeline_dir, tmp_path / "tiny", tiny, tmp_path / "tiny.work", progress=False, cache_dir=work)
    assert (work / "latents.safetensors").stat().st_mtime_ns == cached
    assert not (tmp_path / "tiny.work" / "latents.safetensors").exists()
    assert read_history(tmp_path / "tiny")[-1].config["summary"]["latent_cache_reused"]
    assert load_pipeline(tmp_path / "tiny").vae.config.num_decoder_blocks == [1, 1, 1]


def test_clip_perceptual(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    from pocketdiff.distill.decoder import ClipPerceptual

    cfg = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2},
                     vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": 16, "patch_size": 8}, projection_dim=16)
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    loss = ClipPerceptual(tmp_path / "clip")
    a = torch.rand(2, 3, 32, 32, requires_grad=True)
    assert loss(a, a.detach()).item() == 0.0
    d = loss(a, torch.rand(2, 3, 32, 32))
    d.backward()
    assert d.item() > 0 and a.grad.abs().sum() > 0


@pytest.mark.parametrize("change,message", [
    ({"kind": "vq"}, "unknown decoder kind 'vq'; allowed: pruned, tiny"),
    ({"perceptual": "lpips"}, "unknown perceptual loss 'lpips'; allowed: clip, none"),
    ({"perceptual": "clip", "perceptual_model": "/nowhere"}, "needs perceptual_model, a local CLIPModel folder"),
    ({"width": 1.5}, "width must be in (0, 1], got 1.5"),
    ({"lr_schedule": "step"}, "unknown learning-rate schedule 'step'; allowed: constant, cosine"),
    ({"tiny_blocks": 0}, "tiny_channels and tiny_blocks must be >= 1; got 16, 25, 64, 500, 64, 0"),
    ({"n_generated": 0, "n_encoded": 0}, "with some data"),
    ({"latent_jitter": 1.5}, "latent_jitter must be in [0, 1] and jitter_scale >= 0; got 1.5, 0.25"),
])
def test_bad_decoder_config(change, message):
    import re

    from pocketdiff.distill.decoder import DecoderDistillConfig

    with pytest.raises(PocketdiffError, match=re.escape(message)):
        DecoderDistillConfig(**{"perceptual": "none", **change}).validate()


def test_cli_distill_decoder_errors(tiny_pipeline_dir, tmp_path, capsys):
    from pocketdiff.cli import main

    out = tmp_path / "d"
    base = ["distill-decoder", "--pipeline", str(tiny_pipeline_dir), "--out", str(out), "--no-progress"]
    assert main([*base, "--kind", "vq"]) == 2 and "unknown decoder kind 'vq'" in capsys.readouterr().err
    assert main([*base, "--perceptual-model", str(tmp_path / "none")]) == 2
    assert "needs perceptual_model" in capsys.readouterr().err and not out.exists()


def test_jitter_latents_mixes_channels_of_the_chosen_rows_only():
    from pocketdiff.distill.decoder import jitter_latents

    z = torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(jitter_latents(z, 0.0, 0.25, torch.Generator().manual_seed(1)), z, rtol=0, atol=0)
    out = jitter_latents(z, 0.5, 0.25, torch.Generator().manual_seed(1))
    again = jitter_latents(z, 0.5, 0.25, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, again, rtol=0, atol=0)  # deterministic per generator (resumable batches)
    changed = (out - z).flatten(1).abs().amax(1) > 0  # [B]
    assert 16 < int(changed.sum()) < 48  # about half the rows
    # a row's mix is a per-pixel linear map of its channels: every pixel of a changed row is M @ z[:, y, x]
    b = int(changed.nonzero()[0])
    m = torch.linalg.lstsq(z[b].flatten(1).T, out[b].flatten(1).T).solution.T  # [C, C]
    torch.testing.assert_close(m @ z[b].flatten(1), out[b].flatten(1), rtol=1e-4, atol=1e-4)
    assert (m - torch.eye(4)).abs().max() > 0.01
