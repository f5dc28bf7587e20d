"""The ``pocketdiff`` command, one module per command group:

- ``cli/generate.py``: ``create``, ``export``, ``generate``, ``eval``;
- ``cli/bench.py``: ``bench`` and ``bench compare|blocks|report``;
- ``cli/stages.py``: the stage commands (flags generated from their config dataclasses), ``build``, ``regress``;
- ``cli/toy.py``: ``toy train-teacher|baseline|demo``.

Library code never sees argparse objects: each handler turns its arguments into typed values or a
config dataclass and calls the library. A :class:`PocketdiffError` becomes a one-line
``error: ...`` on stderr and exit status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pocketdiff.cli import bench, generate, stages, toy
from pocketdiff.cli.common import Parser
from pocketdiff.errors import PocketdiffError

log = logging.getLogger("pocketdiff")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pocketdiff", description="Make a Stable Diffusion 1.x checkpoint phone-ready.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in (generate, bench, stages, toy):
        group.add_commands(sub)
    return p


class _DropKnownNoise(logging.Filter):
    """diffusers warns at import that optimum and optimum-onnx share a package name (harmless, ENV.md)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Multiple distributions found for package optimum")


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("diffusers.utils.import_utils").addFilter(_DropKnownNoise())
    # coremltools logs at WARNING that prediction is unavailable off macOS (known: export/coreml.py)
    # and that tuples/int64 constants are converted; the exporter validates what matters.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # "Loading pipeline components" bars; we draw our own
    except ImportError:
        pass
    try:
        return args.func(args)
    except PocketdiffError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"error: {exc}\n")
        return 2
