"""``bench`` and its subcommands ``compare``, ``blocks``, ``report`` and ``project``: latency, memory and FLOPs, side
by side, per block, as HTML (``docs/benchmarks.md``), and projected onto phones (``docs/phone_projection.md``)."""

from __future__ import annotations

from pathlib import Path

from pocketdiff.architectures.factory import ARCHITECTURES, build_pipeline, load_unet_spec
from pocketdiff.benchmarks.adb import AdbTarget, bench_adb
from pocketdiff.benchmarks.blocks import BLOCK_BACKENDS, measure_block_latency, target_key, write_latency_table
from pocketdiff.benchmarks.compare import compare, parse_side, side_names
from pocketdiff.benchmarks.components import BACKENDS as BENCH_BACKENDS
from pocketdiff.benchmarks.components import arch_sources, bench_components
from pocketdiff.benchmarks.latency import machine_info
from pocketdiff.benchmarks.projection import ProjectionConfig, format_projection, project
from pocketdiff.benchmarks.report import read_bench_results, write_bench_report
from pocketdiff.cli.common import (Parser, Progress, add_config_args, add_trusted_key, check_suffix, config_from_args,
                                   note_verification, trusted_key, write_json)
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.pipedir import load_pipeline


def _check_bench_args(args) -> None:
    if args.json and not str(args.json).endswith(".json"):
        raise PocketdiffError(f"--json must be a .json file, got {args.json}")
    if getattr(args, "html", None) and not str(args.html).endswith(".html"):
        raise PocketdiffError(f"--html must be a .html file, got {args.html}")
    for name in ("threads", "repeat"):
        if getattr(args, name) < 1:
            raise PocketdiffError(f"--{name} must be >= 1, got {getattr(args, name)}")


def _cmd_bench(args) -> int:
    if not (args.pipeline or args.bundle or args.arch):
        raise PocketdiffError("bench needs --pipeline DIR, --bundle DIR or --arch NAME (or: bench compare A B)")
    if args.backend not in BENCH_BACKENDS:
        raise choice_error("backend", args.backend, BENCH_BACKENDS)
    if args.resolution is not None and not args.arch:
        raise PocketdiffError("--resolution applies to --arch (an exported bundle has fixed shapes)")
    if args.unet_spec and not args.arch:
        raise PocketdiffError("--unet-spec applies to --arch (a pipeline or bundle already has its UNet)")
    _check_bench_args(args)
    if args.target not in ("local", "adb"):
        raise choice_error("bench target", args.target, ("local", "adb"))
    if args.target == "adb" and args.backend != "executorch":
        raise PocketdiffError("--target adb runs ExecuTorch programs: pass --backend executorch")
    if args.target == "local" and (args.runner or args.serial):
        raise PocketdiffError("--runner and --serial apply to --target adb")
    source, pipeline_dir = args.pipeline or args.bundle, None
    if args.arch:
        source, pipeline_dir = arch_sources(args.arch, args.backend, args.resolution, unet_spec=args.unet_spec)
    elif args.backend == "torch" and not args.pipeline:
        raise PocketdiffError("--backend torch benchmarks a pipeline folder: pass --pipeline")
    elif args.backend != "torch" and not args.bundle:
        raise PocketdiffError(f"--backend {args.backend} benchmarks an exported bundle: pass --bundle")
    if args.target == "adb":
        return _bench_adb(args, source)
    with Progress("benchmarking", "case", args.no_progress) as progress:
        result = bench_components(source, args.backend, args.threads, args.warmup, args.repeat,
                                  args.peak_gflops, progress, pipeline_dir, trusted_key(args, args.bundle))
    note_verification(args, args.bundle)
    print(f"{'component':<13}{'batch':>5}{'median ms':>11}{'min':>9}{'max':>9}{'cold s':>8}{'peak RSS MB':>12}"
          f"{'GMACs':>9}{'GFLOP/s':>9}{'of peak':>9}")
    for r in result["components"]:
        macs = f"{r['flops']['macs'] / 1e9:.3f}" if r["flops"] else "-"  # FLOPs need the torch modules
        rate = f"{r['gflops_per_s']:.1f}" if "gflops_per_s" in r else "-"
        share = f"{r['fraction_of_peak']:.1%}" if "fraction_of_peak" in r else "-"
        print(f"{r['component']:<13}{r['batch']:>5}{r['median_ms']:>11.2f}{r['min_ms']:>9.2f}{r['max_ms']:>9.2f}"
              f"{r['cold_start_s']:>8.2f}{r['peak_rss_mb']:>12.0f}{macs:>9}{rate:>9}{share:>9}")
    print(f"peak: {result['peak']['peak_gflops']} GFLOP/s ({result['peak']['how']}); machine: {result['machine']['cpu']}")
    write_json(args.json, result)
    if args.html:
        print(f"wrote {write_bench_report(args.html, bench_results=[result])}")
    return 0


def _bench_adb(args, source) -> int:
    if not args.runner:
        raise PocketdiffError("--target adb needs --runner PATH (executor_runner built for the phone)")
    target = AdbTarget(Path(args.runner), args.serial, args.adb)
    with Progress("on device", "component", args.no_progress) as progress:
        result = bench_adb(source, target, args.threads, args.warmup, args.repeat, progress)
    print(f"device: {result['device'].get('ro.product.manufacturer', '')} {result['device'].get('ro.product.model', '')}")
    print(f"{'component':<13}{'batch':>5}{'median ms':>11}{'min':>9}{'max':>9}{'load ms':>9}")
    for r in result["components"]:
        med = r.get("median_ms", r.get("mean_ms"))
        print(f"{r['component']:<13}{r['batch']:>5}{med:>11.2f}{r.get('min_ms', med):>9.2f}{r.get('max_ms', med):>9.2f}"
              f"{r['load_ms'] or float('nan'):>9.1f}")
    write_json(args.json, result)
    return 0


def _cmd_bench_blocks(args) -> int:
    if args.backend not in BLOCK_BACKENDS:
        raise choice_error("per-block latency backend", args.backend, BLOCK_BACKENDS)
    if not str(args.out).endswith(".json"):
        raise PocketdiffError(f"--out must be a .json file, got {args.out}")
    for name in ("threads", "repeat", "batch"):
        if getattr(args, name) < 1:
            raise PocketdiffError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if bool(args.pipeline) == bool(args.arch):
        raise PocketdiffError("bench blocks needs exactly one of --pipeline DIR or --arch NAME")
    if args.pipeline:
        unet = load_pipeline(args.pipeline).unet
    else:
        overrides = load_unet_spec(args.unet_spec) if args.unet_spec else None
        unet = build_pipeline(args.arch, seed=0, resolution=args.resolution, unet_overrides=overrides).unet
    key = args.target_key or target_key(args.backend, args.threads)
    with Progress("timing blocks", "block", args.no_progress) as progress:
        table = measure_block_latency(unet, args.batch, args.backend, args.threads, args.warmup, args.repeat,
                                      progress)
    path = write_latency_table(args.out, key, table, machine_info(args.threads))
    total = sum(b["median_ms"] for b in table["blocks"].values())
    print(f"{len(table['blocks'])} blocks, {total:.2f} ms summed; whole UNet {table['unet']['median_ms']:.2f} ms, "
          f"per-call overhead {table['call_overhead_ms']:.3f} ms; wrote table {key!r} to {path}")
    return 0


def _cmd_bench_report(args) -> int:
    if not str(args.out).endswith(".html"):
        raise PocketdiffError(f"--out must be a .html file, got {args.out}")
    benches, comparison = read_bench_results(args.results)
    print(f"wrote {write_bench_report(args.out, benches, comparison, title=args.title)}")
    return 0


def _cmd_bench_compare(args) -> int:
    _check_bench_args(args)
    names = side_names(len(args.sides))
    bundles = [t.partition("bundle=")[2].split(",")[0] for t in args.sides if "bundle=" in t]
    key = trusted_key(args, ", ".join(bundles))
    sides = [parse_side(text, key) for text in args.sides]
    with Progress("comparing", "component", args.no_progress) as progress:
        result = compare(sides, args.threads, args.warmup, args.repeat, progress, pairwise=args.pairwise,
                         components=tuple(args.components.split(",")) if args.components else None)
    for bundle in dict.fromkeys(bundles):
        note_verification(args, bundle)
    for n, s in zip(names, sides):
        print(f"{n} = {s.label}")
    print(f"{'component':<13}{'batch':>5}" + "".join(f"{n + ' ms':>11}" for n in names)
          + "".join(f"{n + '/A':>8}" for n in names[1:]))
    for r in result["components"]:
        cells = "".join(f"{r[n]['median_ms']:>11.2f}" if n in r else f"{'-':>11}" for n in names)
        ratios = "".join(f"{r.get('ratio_vs_a', {}).get(n, float('nan')):>8.3f}" for n in names[1:])
        print(f"{r['component']:<13}{r['batch']:>5}{cells}{ratios}")
    e = result["end_to_end"]
    for n in names:
        if "e2e_ms" in e[n]:
            calls = ", ".join(f"{k} x{v:g}" for k, v in e[n]["calls"].items())
            print(f"end to end {n}: {e[n]['e2e_ms']:.1f} ms ({e[n]['policy']}, {e[n]['steps']} steps; from its trace: "
                  f"{calls})")
    for n, x in e.get("speedup_vs_a", {}).items():
        print(f"{n} is {x:.2f}x faster than A end to end")
    write_json(args.json, result)
    if args.html:
        print(f"wrote {write_bench_report(args.html, compare_result=result)}")
    return 0


def _cmd_bench_project(args) -> int:
    check_suffix(args.json, ".json", "--json")
    result = project(config_from_args(ProjectionConfig, args))
    print(format_projection(result))
    write_json(args.json, result)
    return 0


def add_commands(sub) -> None:
    b = sub.add_parser("bench", help="per-component latency, cold start, peak RSS, FLOPs (each in its own process)")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--pipeline", help="diffusers pipeline folder (backend torch)")
    src.add_argument("--bundle", help="app bundle (backend onnx or executorch)")
    src.add_argument("--arch", help=f"named architecture with random weights, built (and exported) once under "
                                    f"build/bench; one of: {', '.join(ARCHITECTURES)}")
    b.add_argument("--resolution", type=int, default=None, help="image size for --arch (default: its native size)")
    b.add_argument("--unet-spec", default=None,
                   help="JSON of UNet2DConditionModel config values overriding --arch's UNet (a diffusers "
                        "unet/config.json works)")
    b.add_argument("--backend", default="torch", help="one of: torch, onnx, executorch")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--repeat", type=int, default=10)
    b.add_argument("--peak-gflops", type=float, default=None, help="fp32 peak (default: estimated from the CPU)")
    b.add_argument("--target", default="local",
                   help="local (this machine) or adb (an Android phone over adb; unverified on hardware, see "
                        "docs/benchmarks.md)")
    b.add_argument("--runner", default=None, help="--target adb: executor_runner binary built for the phone")
    b.add_argument("--serial", default=None, help="--target adb: device serial (adb -s)")
    b.add_argument("--adb", default="adb", help="--target adb: the adb executable")
    b.add_argument("--json", default=None, help="write the results (with machine info) to this .json file")
    b.add_argument("--html", default=None, help="write an HTML report (latency bars, FLOPs, machine info)")
    b.add_argument("--no-progress", action="store_true")
    add_trusted_key(b)
    b.set_defaults(func=_cmd_bench)
    b_sub = b.add_subparsers(dest="bench_command", parser_class=Parser)
    bc = b_sub.add_parser("compare", help="configurations side by side in one process, with ratios to the first")
    bc.add_argument("sides", nargs="+", metavar="SIDE",
                    help="two or more of pipeline=DIR[,backend=torch|optimum], bundle=DIR[,backend=onnx|executorch]"
                         "[,policy=P] or arch=NAME[,spec=FILE][,resolution=N][,decoder_width=W], each with optional "
                         ",steps=N,guidance=W (default: what the side pins); ratios are each side over the first; "
                         "end to end is composed from each side's call trace")
    bc.add_argument("--threads", type=int, default=2)
    bc.add_argument("--warmup", type=int, default=3)
    bc.add_argument("--repeat", type=int, default=10)
    bc.add_argument("--json", default=None, help="write the comparison to this .json file")
    bc.add_argument("--html", default=None, help="write an HTML report (latency bars, ratios, machine info)")
    bc.add_argument("--components", default=None, help="comma-separated subset of text_encoder,unet,vae_decoder "
                                                        "(default: all; end to end needs all)")
    bc.add_argument("--pairwise", action="store_true",
                    help="alternate A with each other side in turn, one pair loaded at a time (large models)")
    bc.add_argument("--no-progress", action="store_true")
    add_trusted_key(bc)
    bc.set_defaults(func=_cmd_bench_compare)
    bb = b_sub.add_parser("blocks", help="per-block UNet latency table (JSON keyed by target; schema-validated)")
    bsrc = bb.add_mutually_exclusive_group()
    bsrc.add_argument("--pipeline", help="diffusers pipeline folder")
    bsrc.add_argument("--arch", help=f"named architecture with random weights; one of: {', '.join(ARCHITECTURES)}")
    bb.add_argument("--resolution", type=int, default=None, help="image size for --arch")
    bb.add_argument("--unet-spec", default=None, help="UNet config overrides for --arch (JSON)")
    bb.add_argument("--backend", default="torch", help="one of: torch, onnx, executorch (each block exported alone)")
    bb.add_argument("--batch", type=int, default=2, help="UNet batch (2: a CFG step)")
    bb.add_argument("--threads", type=int, default=2)
    bb.add_argument("--warmup", type=int, default=3)
    bb.add_argument("--repeat", type=int, default=10)
    bb.add_argument("--out", required=True, help="table file (.json); other targets in it are kept")
    bb.add_argument("--target-key", default=None, help="key of this table in the file (default: BACKEND-cpu-Nt)")
    bb.add_argument("--no-progress", action="store_true")
    bb.set_defaults(func=_cmd_bench_blocks)
    br = b_sub.add_parser("report", help="an HTML report from saved bench / bench compare JSON files")
    br.add_argument("results", nargs="+", help="JSON files written by bench --json (one per backend) and at most "
                                                "one by bench compare --json")
    br.add_argument("--out", required=True, help="output .html file")
    br.add_argument("--title", default="pocketdiff benchmark")
    br.set_defaults(func=_cmd_bench_report)
    bp = b_sub.add_parser("project", help="phone latency projection: a roofline model calibrated on published "
                                          "per-component phone figures, with its leave-one-out error")
    add_config_args(bp, ProjectionConfig)
    bp.add_argument("--json", default=None, help="write the projection and its calibration to this .json file")
    bp.set_defaults(func=_cmd_bench_project)