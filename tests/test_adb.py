"""`bench --target adb`: command construction and log parsing, against a fake adb (no phone here;
the path is unverified on hardware, as docs/benchmarks.md says)."""

import json
import stat
import sys
from pathlib import Path

import pytest

from pocketdiff.benchmarks.adb import AdbTarget, adb_plan, parse_runner_log, runner_command
from pocketdiff.cli import main
from pocketdiff.errors import PocketdiffError

# executor_runner's log lines (examples/portable/executor_runner/executor_runner.cpp), as ET_LOG prints them
LOG = """I 00:00:00.001 executorch:executor_runner.cpp:301] Model file /data/local/tmp/pocketdiff/unet.pte is loaded.
I 00:00:00.120 executorch:executor_runner.cpp:395] Model loaded in 118.500000 ms.
I 00:00:00.300 executorch:executor_runner.cpp:512] Iteration 1 of 4: 180.250000 ms
I 00:00:00.400 executorch:executor_runner.cpp:512] Iteration 2 of 4: 101.000000 ms
I 00:00:00.500 executorch:executor_runner.cpp:512] Iteration 3 of 4: 99.000000 ms
I 00:00:00.600 executorch:executor_runner.cpp:512] Iteration 4 of 4: 103.000000 ms
I 00:00:00.600 executorch:executor_runner.cpp:523] Model executed successfully 4 time(s) in 483.250000 ms.
"""


def test_plan_commands():
    t = AdbTarget(Path("/opt/et/executor_runner"), serial="R5CT1234")
    setup, runs = adb_plan(t, {"unet": Path("b/executorch/unet.pte"), "vae_decoder": Path("b/executorch/vae.pte")},
                           threads=4, warmup=2, repeat=5)
    assert setup == [
        ["adb", "-s", "R5CT1234", "shell", "mkdir -p /data/local/tmp/pocketdiff"],
        ["adb", "-s", "R5CT1234", "push", "/opt/et/executor_runner", "/data/local/tmp/pocketdiff/executor_runner"],
        ["adb", "-s", "R5CT1234", "shell", "chmod +x /data/local/tmp/pocketdiff/executor_runner"],
        ["adb", "-s", "R5CT1234", "push", "b/executorch/unet.pte", "/data/local/tmp/pocketdiff/unet.pte"],
        ["adb", "-s", "R5CT1234", "push", "b/executorch/vae.pte", "/data/local/tmp/pocketdiff/vae.pte"],
    ]
    assert runs["unet"] == ["adb", "-s", "R5CT1234", "shell",
                            "/data/local/tmp/pocketdiff/executor_runner --model_path /data/local/tmp/pocketdiff/unet.pte"
                            " --num_executions 7 --cpu_threads 4"]
    assert runner_command(AdbTarget(Path("r")), "u.pte", 1, 3).startswith("/data/local/tmp/pocketdiff/executor_runner")
    assert adb_plan(AdbTarget(Path("r")), {}, 1, 0, 1)[0][0] == ["adb", "shell", "mkdir -p /data/local/tmp/pocketdiff"]
    with pytest.raises(PocketdiffError, match="repeat >= 1"):
        adb_plan(t, {}, threads=4, warmup=0, repeat=0)


def test_parse_log():
    r = parse_runner_log(LOG, warmup=1)
    assert r["load_ms"] == 118.5 and r["first_call_ms"] == 180.25
    assert (r["median_ms"], r["min_ms"], r["max_ms"], r["repeat"], r["warmup"]) == (101.0, 99.0, 103.0, 3, 1)
    assert r["cold_start_s"] == pytest.approx(0.29875)
    total_only = "I executorch] Model executed successfully 10 time(s) in 250.000000 ms.\n"
    assert parse_runner_log(total_only, warmup=2)["mean_ms"] == 25.0
    with pytest.raises(PocketdiffError, match="printed no timings .*Failed to parse model file"):
        parse_runner_log("E executorch] Failed to parse model file x.pte\n", 0)


FAKE_ADB = """#!{python}
import sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
if args[:2] == ["-s", "FAKE"]:
    args = args[2:]
if args[0] == "shell" and args[1].startswith("getprop"):
    print("fake-" + args[1].split()[-1])
elif args[0] == "shell" and "executor_runner --model_path" in args[1]:
    sys.stdout.write({runner_log!r})
"""


def test_bench_target_adb_with_fake_adb(tiny_bundle, tmp_path, capsys):
    bundle = tiny_bundle
    calls, adb = tmp_path / "adb.log", tmp_path / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable, log=str(calls), runner_log=LOG))
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    runner = tmp_path / "executor_runner"
    runner.write_bytes(b"\x7fELF fake")
    out = tmp_path / "adb.json"
    assert main(["bench", "--bundle", str(bundle), "--backend", "executorch", "--target", "adb", "--runner",
                 str(runner), "--serial", "FAKE", "--adb", str(adb), "--warmup", "1", "--repeat", "3",
                 "--threads", "4", "--json", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["target"] == "adb" and r["device"]["ro.product.model"] == "fake-ro.product.model"
    assert [c["component"] for c in r["components"]] == ["text_encoder", "unet", "vae_decoder"]
    assert all(c["median_ms"] == 101.0 for c in r["components"])
    log = calls.read_text().splitlines()
    assert sum("push" in line and line.endswith(".pte") for line in log) == 3
    assert sum("--num_executions 4 --cpu_threads 4" in line for line in log) == 3
    assert "device: fake-ro.product.manufacturer fake-ro.product.model" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--backend", "onnx", "--target", "adb"], "--target adb runs ExecuTorch programs"),
    (["--backend", "executorch", "--target", "adb"], "--target adb needs --runner PATH"),
    (["--backend", "executorch", "--target", "phone"], "unknown bench target 'phone'"),
    (["--backend", "executorch", "--serial", "X"], "--runner and --serial apply to --target adb"),
    (["--backend", "executorch", "--target", "adb", "--runner", "/nonexistent/runner"],
     "executor_runner binary /nonexistent/runner does not exist"),
])
def test_adb_bad_args(tiny_bundle, capsys, args, message):
    assert main(["bench", "--bundle", str(tiny_bundle), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
