import subprocess
import sys


def test_runtime_is_torch_free():
    code = ("import pocketdiff.runtime, pocketdiff.runtime.sampler, sys; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
