"""Bundles that cannot be subverted: hostile manifests fail closed with one line before anything outside the
bundle is opened or stat'ed; signed manifests (Ed25519 over the exact manifest bytes) verify, and an edited,
foreign-signed or unsigned bundle under a trusted key fails before any model loads, on onnxruntime and
ExecuTorch; the signature format against RFC 8032's test vector."""

import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pocketdiff.cli import main
from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.bundle import SIGNATURE_FILE, load_bundle
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.runtime.signing import keygen, load_private_key, load_public_key, sign
from touched import Touched


def _copy(bundle, tmp_path, name="b") -> Path:
    b = tmp_path / name
    shutil.copytree(bundle, b)
    return b


def _edit(b: Path, change) -> Path:
    m = json.loads((b / "manifest.json").read_text())
    change(m)  # (in place)
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def _unet(m, target="onnx"):
    return next(c for c in m["components"] if c["role"] == "unet" and c["target"] == target)


def _file(m, path):
    return next(f for f in m["files"] if f["path"] == path)


def _symlink_unet(b: Path, secret: Path) -> None:
    (b / "onnx/unet/model.onnx").unlink()
    os.symlink(secret, b / "onnx/unet/model.onnx")


HOSTILE = {
    "component path with ../": (lambda b, s: _edit(b, lambda m: _unet(m).update(path="onnx/../../outside/secret.onnx")),
                                "manifest.components[1].path must stay inside the bundle"),
    "absolute path in files": (lambda b, s: _edit(b, lambda m: m["files"][0].update(path=str(s))),
                               "manifest.files[0].path must be a relative POSIX path inside the bundle"),
    "symlinked model file pointing outside": (_symlink_unet, "is a symlink that leaves the bundle"),
    "component with an unknown key": (lambda b, s: _edit(b, lambda m: _unet(m).update(weights="x")),
                                      "manifest.components[1] has an unknown field 'weights'"),
    "files entry missing sha256": (lambda b, s: _edit(b, lambda m: m["files"][0].pop("sha256")),
                                   "manifest.files[0].sha256 is missing"),
    "non-hex sha": (lambda b, s: _edit(b, lambda m: m["files"][0].update(sha256="z" * 64)),
                    "manifest.files[0].sha256 must be 64 lowercase hex digits"),
    "unknown role": (lambda b, s: _edit(b, lambda m: _unet(m).update(role="unet2")),
                     "manifest.components[1].role is 'unet2', not a role this runtime knows"),
    "unknown target": (lambda b, s: _edit(b, lambda m: _unet(m).update(target="tflite")),
                       "manifest.components[1].target is 'tflite'; allowed: onnx, coreml, executorch"),
    "valid JSON but not an object": (lambda b, s: (b / "manifest.json").write_text("[1, 2, 3]"),
                                     "bundle manifest: (the whole file) must be a JSON object, got list"),
}


def hostile_bundle(bundle: Path, tmp_path: Path, case: str) -> tuple[Path, str]:
    """A copy of ``bundle`` made hostile as HOSTILE[case] says (a secret file waits outside it), and the words the
    refusal must contain."""
    make, message = HOSTILE[case]
    secret = tmp_path / "outside" / "secret.onnx"
    secret.parent.mkdir()
    shutil.copy(bundle / "onnx/unet/model.onnx", secret)
    b = _copy(bundle, tmp_path)
    make(b, secret)
    return b, message


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_bundle_fails_closed_without_touching_outside(tiny_bundle, tmp_path, monkeypatch, capsys, case):
    b, message = hostile_bundle(tiny_bundle, tmp_path, case)
    touched = Touched(monkeypatch)
    with pytest.raises(PocketdiffError) as exc:
        RuntimePipeline.from_bundle(b)
    outside = touched.outside(b)
    monkeypatch.undo()
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert outside == [], f"{case}: touched {outside}"
    out = tmp_path / "x.png"
    assert main(["generate", "--bundle", str(b), "a red circle", "--out", str(out), "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0] and not out.exists()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return keygen(d / "ours"), keygen(d / "theirs")


@pytest.fixture(scope="module")
def signed_bundle(tiny_bundle, keys, tmp_path_factory):
    b = tmp_path_factory.mktemp("signed") / "b"
    shutil.copytree(tiny_bundle, b)
    (b / SIGNATURE_FILE).write_text(sign((b / "manifest.json").read_bytes(), load_private_key(keys[0][0])))
    return b


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_signed_path(signed_bundle, keys, tmp_path, capsys, backend, monkeypatch):
    (ours, ours_pub), (theirs, theirs_pub) = keys
    rt = RuntimePipeline.from_bundle(signed_bundle, backend, trusted_key=load_public_key(ours_pub))
    assert rt.generate("a red circle", steps=2, guidance=7.5, seed=0).image.shape == (32, 32, 3)
    out = tmp_path / "ok.png"
    assert main(["generate", "--bundle", str(signed_bundle), "--backend", backend, "a red circle", "--steps", "2",
                 "--out", str(out), "--no-progress", "--trusted-key", str(ours_pub)]) == 0 and out.is_file()
    assert "its manifest is signed by" in capsys.readouterr().err

    edited = _edit(_copy(signed_bundle, tmp_path, "edited"), lambda m: m["defaults"].update(steps=3))
    foreign = _copy(signed_bundle, tmp_path, "foreign")
    (foreign / SIGNATURE_FILE).write_text(sign((foreign / "manifest.json").read_bytes(), load_private_key(theirs)))
    unsigned = _copy(signed_bundle, tmp_path, "unsigned")
    (unsigned / SIGNATURE_FILE).unlink()
    opened = []
    with monkeypatch.context() as m:
        m.setattr("pocketdiff.runtime.sampler.BACKENDS", {backend: lambda *a: opened.append(a)})
        m.setenv("POCKETDIFF_TRUSTED_KEY", str(ours_pub))  # the environment variable works as the flag does
        for bad, message in ((edited, "does not verify"), (foreign, "does not verify"), (unsigned, "is not signed")):
            with pytest.raises(PocketdiffError, match=message):
                RuntimePipeline.from_bundle(bad, backend, trusted_key=load_public_key(ours_pub))
            assert main(["generate", "--bundle", str(bad), "--backend", backend, "a red circle", "--out",
                         str(tmp_path / "no.png"), "--no-progress"]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
            assert not (tmp_path / "no.png").exists()
    assert opened == []  # failed before any session opened
    # without a key, as before, and the CLI says the bundle is unverified
    assert main(["generate", "--bundle", str(unsigned), "--backend", backend, "a red circle", "--steps", "2",
                 "--out", str(tmp_path / "plain.png"), "--no-progress"]) == 0
    assert "is unverified" in capsys.readouterr().err


def test_export_signs_and_keygen_refuses_to_overwrite(tiny_pipeline_dir, keys, tmp_path, capsys):
    (ours, ours_pub), _ = keys
    b = tmp_path / "b"
    assert main(["export", "--pipeline", str(tiny_pipeline_dir), "--out", str(b), "--targets", "onnx",
                 "--no-progress", "--sign-key", str(ours)]) == 0
    assert "signed by" in capsys.readouterr().out
    assert load_bundle(b, trusted_key=load_public_key(ours_pub)).signed_by == ours_pub.read_text().strip()
    assert main(["keygen", "--out", str(ours)]) == 2 and "already exists" in capsys.readouterr().err


def test_signature_format_against_rfc8032_test_vector_1(tmp_path):
    """RFC 8032 §7.1 TEST 1 (empty message): our signature file is that signature in lowercase hex."""
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    want = ("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0"
            "595bbe24655141438e7a100b")
    assert sign(b"", Ed25519PrivateKey.from_private_bytes(secret)) == want + "\n"
    pub = tmp_path / "k.pub"
    pub.write_text("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\n")
    load_public_key(pub).verify(bytes.fromhex(want), b"")


def test_the_signed_test_vector_in_the_docs_verifies():
    import re

    doc = (Path(__file__).parents[1] / "docs" / "export.md").read_text()
    section = doc[doc.index("Signed test vector"):]
    seed, pub, sig = (re.search(rf"\| {label} \| `([0-9a-f]+)` \|", section).group(1)
                      for label in (r"private key \(seed\)", r"public key \(`KEY.pub`\)", r"`manifest.json.sig`"))
    message = b'{"format_version": 1}\n'
    assert sign(message, Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed))) == sig + "\n"
    Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)).public_key().verify(bytes.fromhex(sig), message)
    assert Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)).public_key().public_bytes_raw().hex() == pub
