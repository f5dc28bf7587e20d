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
import importlib
import logging
import sys

from pocketdiff import noise
from pocketdiff.cli.common import Parser
from pocketdiff.errors import PocketdiffError

log = logging.getLogger("pocketdiff")
# The command groups, imported by name in build_parser: after noise.quiet(), since their imports (torch,
# diffusers, torchao, coremltools) are what print the known noise.
GROUPS = ("pocketdiff.cli.generate", "pocketdiff.cli.bench", "pocketdiff.cli.stages", "pocketdiff.cli.toy")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pocketdiff", description="Make a Stable Diffusion 1.x checkpoint phone-ready.")
    p.add_argument("--debug", action="store_true", help="show tracebacks, and every third-party message")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details, and show third-party "
                                                                   "progress bars")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in GROUPS:
        importlib.import_module(group).add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # read before the parser is built: building it imports the groups, whose imports print the noise
    if "--debug" not in argv:
        noise.quiet(show_progress="-v" in argv or "--verbose" in argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose and not args.debug:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # "Loading pipeline components" bars; we draw our own
    try:
        return args.func(args)
    except PocketdiffError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"error: {exc}\n")
        return 2
