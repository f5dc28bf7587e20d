"""What every command group shares: the one-line-error parser, the progress bar, and flags generated from
config dataclasses (each default lives in the dataclass, nowhere else).

:func:`add_config_args` turns every field of a dataclass into a flag (``batch_size`` -> ``--batch-size``;
a nested dataclass field ``finetune`` -> ``--finetune-steps`` ...), typed from the annotation, defaulted from
the dataclass, with help from the field's ``metadata["help"]`` or its trailing ``# comment`` in the source.
:func:`config_from_args` builds the dataclass back from the parsed arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import re
import sys
import tokenize
import typing
from pathlib import Path
from typing import Any

from pocketdiff.errors import PocketdiffError
from pocketdiff.pipedir import atomic_output_file
from pocketdiff.runtime.signing import TRUSTED_KEY_ENV, load_public_key, public_key_hex, trusted_key_path


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


class Progress:
    """A tqdm bar driven by the library's ``callback(done, total)`` progress protocol. The bar appears with the
    first progress report, so a command that fails before any work prints its one error line alone."""

    def __init__(self, desc: str, unit: str, disable: bool):
        self.desc, self.unit, self.disable, self.bar = desc, unit, disable, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc=self.desc, unit=self.unit, disable=self.disable, file=sys.stderr)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def field_help(cls) -> dict[str, str]:
    """field name -> its trailing ``# comment`` in ``cls``'s source (inherited classes' too)."""
    out: dict[str, str] = {}
    for klass in reversed([k for k in inspect.getmro(cls) if dataclasses.is_dataclass(k)]):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        line_field = {}
        for i, line in enumerate(source.splitlines(), 1):
            m = re.match(r"\s+(\w+)\s*:", line)
            if m:
                line_field[i] = m.group(1)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT and tok.start[0] in line_field:
                out[line_field[tok.start[0]]] = tok.string.lstrip("#").strip()
    return out


def _tuple_of(kind):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}")
    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def add_config_args(parser: argparse.ArgumentParser, cls, defaults: Any = None, prefix: str = "",
                    skip: tuple[str, ...] = ()) -> None:
    """One flag per field of dataclass ``cls`` (recursively for nested dataclasses); ``defaults`` is the
    instance whose values are shown and used (default: ``cls()``)."""
    defaults = defaults if defaults is not None else cls()
    hints, helps = typing.get_type_hints(cls), field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint, default = hints[f.name], getattr(defaults, f.name)
        text = f.metadata.get("help") or helps.get(f.name, "") or f.name.replace("_", " ")
        if dataclasses.is_dataclass(hint):
            add_config_args(parser, hint, default, f"{prefix}{f.name}_")
            continue
        dest, flag = prefix + f.name, _flag(prefix, f.name)
        args = typing.get_args(hint)
        if hint is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif typing.get_origin(hint) is tuple:
            parser.add_argument(flag, dest=dest, type=_tuple_of(args[0]), default=default,
                                help=f"{text} (comma-separated)".strip())
        else:
            kind = next((a for a in args if a is not type(None)), hint) if args else hint
            parser.add_argument(flag, dest=dest, type=kind, default=default, help=text)


def config_from_args(cls, args: argparse.Namespace, prefix: str = "", **fixed) -> Any:
    """The dataclass ``cls`` from the flags :func:`add_config_args` made (``fixed``: values set by the command)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            kwargs[f.name] = fixed[f.name]
        elif dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = config_from_args(hints[f.name], args, f"{prefix}{f.name}_")
        elif hasattr(args, prefix + f.name):
            kwargs[f.name] = getattr(args, prefix + f.name)
    return cls(**kwargs)


def check_suffix(path: str | None, suffix: str, flag: str) -> None:
    if path and not str(path).endswith(suffix):
        raise PocketdiffError(f"{flag} must be a {suffix} file, got {path}")


def write_json(path: str | None, result: dict) -> None:
    if path:
        with atomic_output_file(path) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")


def stage_parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand whose help shows every default (they come from the config dataclasses)."""
    return sub.add_parser(name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def workdir_for(args) -> Path:
    return Path(args.workdir or f"{args.out}.work")


def add_trusted_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trusted-key", default=None,
                        help=f"an Ed25519 public key file (pocketdiff keygen's KEY.pub): a bundle must be signed by "
                             f"it (default: ${TRUSTED_KEY_ENV}; without either, signatures are not checked)")


def trusted_key(args, bundle) -> Any:
    """The public key a bundle must be signed with (``--trusted-key``, else ``$POCKETDIFF_TRUSTED_KEY``), or None
    (signatures not checked). None without a bundle. Says nothing: :func:`note_verification` does, once the bundle
    has loaded, so a refused bundle prints only its one ``error:`` line."""
    if not bundle:
        return None
    path = trusted_key_path(getattr(args, "trusted_key", None))
    return None if path is None else load_public_key(path)


def note_verification(args, bundle) -> None:
    """One stderr line on what was checked of a bundle that loaded: the signer's key, or that it is unverified."""
    if not bundle:
        return
    path = trusted_key_path(getattr(args, "trusted_key", None))
    if path is None:
        sys.stderr.write(f"note: bundle {bundle} is unverified: no --trusted-key (or ${TRUSTED_KEY_ENV}), so its "
                         "signature is not checked (its files' checksums are)\n")
    else:
        sys.stderr.write(f"bundle {bundle}: its manifest is signed by {public_key_hex(load_public_key(path))[:16]}... "
                         f"({path})\n")

