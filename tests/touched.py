"""Which paths a piece of code opens or stats (tests/test_bundle_security.py, tests/test_fuzz.py)."""

import os
import sys
from pathlib import Path

_OPENED: list[str] = []
_LISTENING = [False]


def _audit(event, args):  # an audit hook cannot be removed: it records only while a Touched is listening
    if _LISTENING[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


class Touched:
    """Every path opened (the ``open`` audit event: builtins, io and os.open) or stat'ed (os.stat and os.lstat,
    which pathlib's is_file/exists/stat and os.path.islink go through) while active."""

    def __init__(self, monkeypatch):
        self.paths: list[str] = []
        for name in ("stat", "lstat"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, lambda p, *a, real=real, **k: self.paths.append(os.fsdecode(p))
                                or real(p, *a, **k))
        _OPENED.clear()
        _LISTENING[0] = True

    def stop(self) -> list[str]:
        _LISTENING[0] = False
        return self.paths + _OPENED

    def outside(self, root: Path) -> list[str]:
        touched = self.stop()
        root = str(root.resolve())
        return [p for p in touched if not os.path.abspath(p).startswith(root)]
