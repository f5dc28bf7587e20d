"""Every bad input: one-line error naming the problem, exit 2, no traceback, no output file touched."""

import json
import logging
import shutil
import subprocess
import sys

import pytest

from pocketdiff.cli import main

PROMPT = "a red circle"
LONG = " ".join(["circle"] * 80)


@pytest.fixture
def out_png(tmp_path):
    """An existing output file that a failed run must leave untouched."""
    (tmp_path / "out").mkdir()
    p = tmp_path / "out" / "out.png"
    p.write_bytes(b"keep me")
    return p


def _fails(capsys, out_png, argv, match):
    rc = main(argv + ["--out", str(out_png), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert match in err[0], err[0]
    assert out_png.read_bytes() == b"keep me"
    assert sorted(p.name for p in out_png.parent.iterdir()) == ["out.png"]  # no temp file left


def test_missing_dir(capsys, out_png, tmp_path):
    _fails(capsys, out_png, ["generate", "--pipeline", str(tmp_path / "missing"), PROMPT], "does not exist")


def test_missing_component(capsys, out_png, copy_pipeline):
    p = copy_pipeline()
    shutil.rmtree(p / "vae")
    _fails(capsys, out_png, ["generate", "--pipeline", str(p), PROMPT], "missing component 'vae'")


def test_cross_attention_mismatch(capsys, out_png, copy_pipeline):
    p = copy_pipeline()
    cfg = json.loads((p / "unet" / "config.json").read_text())
    (p / "unet" / "config.json").write_text(json.dumps({**cfg, "cross_attention_dim": 64}))
    _fails(capsys, out_png, ["generate", "--pipeline", str(p), PROMPT], "cross_attention_dim 64 does not match")


def test_corrupt_safetensors(capsys, out_png, copy_pipeline):
    p = copy_pipeline()
    f = p / "text_encoder" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    _fails(capsys, out_png, ["generate", "--pipeline", str(p), PROMPT], "corrupt safetensors file")


@pytest.mark.parametrize("path", ["pipeline", "onnx"])
def test_prompt_too_long(capsys, out_png, tiny_pipeline_dir, tiny_onnx_dir, path):
    src = tiny_pipeline_dir if path == "pipeline" else tiny_onnx_dir
    _fails(capsys, out_png, ["generate", f"--{path}", str(src), LONG], "82 tokens (with start/end tokens), over the limit of 77")


def test_truncate_warns_and_generates(capsys, caplog, tiny_onnx_dir, tmp_path):
    out = tmp_path / "t.png"
    with caplog.at_level(logging.WARNING):
        rc = main(["generate", "--onnx", str(tiny_onnx_dir), LONG, "--truncate", "--steps", "2", "--out", str(out),
                   "--no-progress"])
    assert rc == 0 and out.is_file()
    assert "truncated to 77 tokens" in caplog.text


@pytest.mark.parametrize("path", ["pipeline", "onnx"])
@pytest.mark.parametrize("args,match", [
    (["--steps", "0"], "steps must be an integer >= 1, got 0"),
    (["--steps", "-3"], "steps must be an integer >= 1, got -3"),
    (["--guidance", "-1"], "guidance must be a finite number >= 0, got -1.0"),
    (["--scheduler", "lms"], "unknown scheduler 'lms'; allowed: ddim, euler, dpm++2m, pndm"),
])
def test_bad_values(capsys, out_png, tiny_pipeline_dir, tiny_onnx_dir, path, args, match):
    src = tiny_pipeline_dir if path == "pipeline" else tiny_onnx_dir
    _fails(capsys, out_png, ["generate", f"--{path}", str(src), PROMPT] + args, match)


@pytest.mark.parametrize("missing", ["unet/model.onnx", "text_encoder/model.onnx", "vae_decoder/model.onnx"])
def test_onnx_folder_missing_model(capsys, out_png, tiny_onnx_dir, tmp_path, missing):
    d = tmp_path / "onnx"
    shutil.copytree(tiny_onnx_dir, d)
    (d / missing).unlink()
    _fails(capsys, out_png, ["generate", "--onnx", str(d), PROMPT], f"is missing: {missing.split('/')[0]} ({missing})")


def test_unparseable_number_is_one_line(capsys, out_png, tiny_onnx_dir):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--onnx", str(tiny_onnx_dir), PROMPT, "--steps", "many"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "--steps: must be an integer or auto" in err[0] and "'many'" in err[0]
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--onnx", str(tiny_onnx_dir), PROMPT, "--seed", "many"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "invalid int value: 'many'" in err[0]


def test_real_process_exit_code_and_debug(tmp_path):
    cmd = [sys.executable, "-m", "pocketdiff.cli", "generate", "--onnx", str(tmp_path / "none"), PROMPT,
           "--out", str(tmp_path / "x.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ONNX folder")
    debug = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True)
    assert "Traceback" in debug.stderr and not (tmp_path / "x.png").exists()
