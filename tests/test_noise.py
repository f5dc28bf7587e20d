"""Quiet by default: a run of the command shows pocketdiff's own lines, no known third-party noise
(pocketdiff/noise.py filters each message by its exact text); --debug shows everything again."""

import re
import subprocess
import sys

from pocketdiff.noise import KNOWN
from pocketdiff.toyworld import TOY_TEACHER_DIR

STUDENT = TOY_TEACHER_DIR / "student"


def _generate(tmp_path, *flags):
    cmd = [sys.executable, "-m", "pocketdiff.cli", *flags, "generate", "--bundle", str(STUDENT), "--backend",
           "executorch", "a red circle", "--out", str(tmp_path / "x.png"), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr.splitlines()


def _known(line: str) -> bool:
    text = re.sub(r"^W\d{4} [\d:.]+ \d+ \S+\] ", "", line)  # torch's glog-style prefix
    return any(re.match(n.text, text) or re.search(n.text, line) for n in KNOWN)


def test_a_run_shows_no_known_noise_and_debug_shows_it(tmp_path):
    quiet = _generate(tmp_path)
    assert [line for line in quiet if _known(line)] == []
    assert all(line.startswith("note: bundle") for line in quiet), quiet  # only pocketdiff's own line is left
    loud = _generate(tmp_path, "--debug")
    assert sum(_known(line) for line in loud) >= 3  # torchao's, the pytree deprecation, XNNPACK's cpuinfo


def test_every_filter_says_where_and_why():
    for n in KNOWN:
        kind, _, name = n.source.partition(":")
        assert kind in ("logging", "warnings", "native") and (name or kind == "native") and len(n.why) > 20
        re.compile(n.text)
