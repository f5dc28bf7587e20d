"""The app ports against the reference (``docs/ports.md``): the Kotlin core (JVM) and the JS core (node) pass every
check of the shipped student's test vectors, as the Python runtime does; hostile bundles and bad signatures are
refused by both with the Python runtime's words; the Kotlin core's JUnit tests and the JS core's node tests pass;
the web demo generates the shipped student's image in headless Chromium within 2/255 of ``pocketdiff generate``.
The per-policy replays run in each method's own test module, on its bundle (``check_all_ports``)."""

import base64
import hashlib
import json
import re
import subprocess

import numpy as np
import pytest
from PIL import Image
from ports import KOTLIN_CORE, REPORTS, ROOT, WEB, check_all_ports, record_check
from test_bundle_security import HOSTILE, _copy, _edit, hostile_bundle

from pocketdiff.cli import main
from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.bundle import SIGNATURE_FILE, load_bundle
from pocketdiff.runtime.signing import keygen, load_private_key, load_public_key, sign

STUDENT = ROOT / "pocketdiff" / "toyworld" / "assets" / "student"
PROMPT = "a small red circle in the top left on a grey background"
PORTED = ("kotlin", "js")


def test_every_port_passes_the_shipped_students_vectors(ports):
    checks = ("manifest", "tokenizer", "rng", "timesteps", "scheduler:ddim", "scheduler:euler", "scheduler:dpm++2m",
              "scheduler:pndm", "policy:guidance_embedded")
    check_all_ports(ports, STUDENT, "student", expect=checks)


def test_kotlin_core_junit_tests(ports, tmp_path):
    proc = subprocess.run(["bash", str(KOTLIN_CORE / "jvm_test.sh"), str(ports.kotlin_jar.parent), "--test-only"],
                          capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "OK (" in proc.stdout


def test_js_core_node_tests(ports):
    proc = subprocess.run(["node", "--test", "test/"], cwd=WEB, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "POCKETDIFF_BUNDLE": str(STUDENT)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_bundles_are_refused_by_every_port(ports, tiny_bundle, tmp_path, case):
    b, message = hostile_bundle(tiny_bundle, tmp_path, case)
    with pytest.raises(PocketdiffError, match=re.escape(message)):
        load_bundle(b)
    record_check("python", f"reject: {case}", "passed", message)
    for port in PORTED:
        proc = ports.run(port, "verify", b)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), (port, proc.stdout, err)
        assert message in err[0], (port, err[0])
        record_check(port, f"reject: {case}", "passed", err[0])
    assert all(ports.run(port, "verify", tiny_bundle).stdout.strip() == "ok" for port in PORTED)


def test_signatures_verify_and_fail_closed_in_every_port(ports, tmp_path):
    (ours, ours_pub), (theirs, _) = keygen(tmp_path / "ours"), keygen(tmp_path / "theirs")
    signed = _copy(STUDENT, tmp_path, "signed")
    (signed / SIGNATURE_FILE).write_text(sign((signed / "manifest.json").read_bytes(), load_private_key(ours)))
    check_all_ports(ports, signed, "student-signed", expect=("manifest", "signature"), key=ours_pub)
    edited = _edit(_copy(signed, tmp_path, "edited"), lambda m: m["defaults"].update(steps=3))
    foreign = _copy(signed, tmp_path, "foreign")
    (foreign / SIGNATURE_FILE).write_text(sign((foreign / "manifest.json").read_bytes(), load_private_key(theirs)))
    unsigned = _copy(signed, tmp_path, "unsigned")
    (unsigned / SIGNATURE_FILE).unlink()
    cases = {"signed manifest edited": (edited, "does not verify"), "signed by another key": (foreign, "does not verify"),
             "unsigned under a trusted key": (unsigned, "is not signed")}
    for case, (bad, message) in cases.items():
        with pytest.raises(PocketdiffError, match=message):
            load_bundle(bad, trusted_key=load_public_key(ours_pub))
        record_check("python", f"reject: {case}", "passed", message)
    for port in PORTED:
        assert ports.run(port, "verify", signed, ours_pub).stdout.strip() == "ok", port
        for case, (bad, message) in cases.items():
            proc = ports.run(port, "verify", bad, ours_pub)
            assert proc.returncode == 2 and message in proc.stderr and proc.stderr.startswith("error: "), (port, bad)
            record_check(port, f"reject: {case}", "passed", proc.stderr.strip())


def test_web_demo_generates_the_students_image_in_chromium(ports, tmp_path, capsys):
    png = tmp_path / "python.png"
    assert main(["generate", "--bundle", str(STUDENT), PROMPT, "--seed", "0", "--out", str(png), "--no-progress"]) == 0
    capsys.readouterr()
    want = np.asarray(Image.open(png).convert("RGB"))
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"height": want.shape[0], "width": want.shape[1],
                                    "pixels": want.reshape(-1).tolist()}))
    out, shot = REPORTS / "web_demo_browser.json", REPORTS.parent / "web_demo.png"
    REPORTS.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((STUDENT / "manifest.json").read_text())
    proc = subprocess.run(["node", str(WEB / "test" / "browser.mjs"), "--bundle", str(STUDENT), "--prompt", PROMPT,
                           "--seed", "0", "--steps", str(manifest["defaults"]["steps"]),
                           "--guidance", str(manifest["defaults"]["guidance"]), "--expected", str(expected),
                           "--out", str(out), "--screenshot", str(shot)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["max_abs_diff"] <= 2 and result["ms_per_step"] > 0, result
    assert shot.is_file()


def test_the_replay_catches_a_wrong_number(ports, tmp_path):
    """The checks can fail: a vectors file with one recorded UNet output changed fails every port's replay."""
    b = _copy(STUDENT, tmp_path, "tampered")
    vectors = json.loads((b / "test_vectors.json").read_text())
    call = next(c for c in vectors["replay"]["calls"] if c["role"] == "unet")
    x = np.frombuffer(base64.b64decode(call["outputs"]["out_sample"]["data"]), "<f4").copy()
    x[:8] += 0.5
    call["outputs"]["out_sample"]["data"] = base64.b64encode(x.tobytes()).decode()
    (b / "test_vectors.json").write_text(json.dumps(vectors))
    _edit(b, lambda m: next(f for f in m["files"] if f["path"] == "test_vectors.json").update(
        sha256=hashlib.sha256((b / "test_vectors.json").read_bytes()).hexdigest(),
        bytes=(b / "test_vectors.json").stat().st_size))
    for port in ("python", *PORTED):
        report = ports.conformance(port, b, "tampered")
        assert report["checks"]["policy:guidance_embedded"]["status"] == "failed", (port, report["checks"])
        assert report["checks"]["tokenizer"]["status"] == "passed", port
    for f in REPORTS.glob("tampered.*.json"):
        f.unlink()
