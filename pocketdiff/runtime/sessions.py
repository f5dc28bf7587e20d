"""Sessions: run one exported component on named numpy inputs, get named numpy outputs.

:class:`Session` is the one protocol the sampler loop calls: declared ``inputs`` and ``outputs``
(:class:`TensorSpec`: name, shape, dtype; a string dim is symbolic, the batch), ``fixed_batch`` (the
one batch a static-shape program takes, or None) and ``run(feeds) -> outputs``. Implementations:

- :class:`OnnxSession`: onnxruntime (CPU execution provider).
- :class:`ExecuTorchSession`: ExecuTorch's Python runtime on a ``.pte``. Its bindings import torch,
  so it is imported lazily, inside the session; ``import pocketdiff.runtime`` and the ONNX path
  stay torch-free. Phone apps use ExecuTorch's C++/Java runtime on the same file.
- :class:`ShapeSession`: no model; answers every call with zeros of the declared output shapes. A dry
  run of the sampler on these sessions gives a policy's call trace without running a model
  (``bench compare`` composes end-to-end latency from it).
- ``export.torch_session.TorchSession`` (outside the runtime: it needs torch): the PyTorch modules, the
  parity reference for the same loop.

A session casts each input to the dtype the graph declares, so callers pass natural numpy types
(int ids, float32 latents, a float timestep) whatever the exporter chose. ``BACKENDS`` is the one
registry of backend names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from pocketdiff import noise
from pocketdiff.errors import PocketdiffError

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int32)": "int32", "tensor(int64)": "int64"}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a component's interface; a ``str`` dim is symbolic (``batch_size``)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["dtype"])

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": [d if isinstance(d, int) else str(d) for d in self.shape],
                "dtype": self.dtype}


@runtime_checkable
class Session(Protocol):
    """What the sampler loop needs of a component, whatever runs it."""

    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]

    @property
    def fixed_batch(self) -> int | None:
        """The only batch a static-shape program takes (None: any batch)."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named inputs (every declared input) -> named outputs."""


def first_dim(specs: Sequence[TensorSpec]) -> int | None:
    """The batch of a static-shape interface: the first input's leading dim when it is a number."""
    shape = specs[0].shape if specs else ()
    return shape[0] if shape and isinstance(shape[0], int) else None


def _check_feeds(path, specs: Sequence[TensorSpec], feeds: dict) -> None:
    missing = sorted({s.name for s in specs} - set(feeds))
    if missing:
        raise PocketdiffError(f"{path}: missing inputs {missing}")


class OnnxSession:
    """An ``onnxruntime.InferenceSession`` with named numpy inputs and outputs."""

    def __init__(self, path: str | Path, threads: int | None = None, allow_spinning: bool = True):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise PocketdiffError(f"ONNX model {path} does not exist")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not allow_spinning:  # idle workers sleep at once (else they spin and steal the CPU from others)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
            raise PocketdiffError(f"cannot load ONNX model {path}: {exc}") from None
        self.path = path
        self.inputs = [TensorSpec(i.name, tuple(i.shape), _ORT_DTYPES.get(i.type, "float32"))
                       for i in self.session.get_inputs()]
        self.outputs = [TensorSpec(o.name, tuple(o.shape), _ORT_DTYPES.get(o.type, "float32"))
                        for o in self.session.get_outputs()]

    @property
    def fixed_batch(self) -> int | None:
        return first_dim(self.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _check_feeds(self.path, self.inputs, feeds)
        cast = {s.name: np.asarray(feeds[s.name], dtype=s.dtype) for s in self.inputs}
        return dict(zip([o.name for o in self.outputs], self.session.run(None, cast)))


class ExecuTorchSession:
    """An ExecuTorch program's ``forward`` with named numpy inputs and outputs.

    ``inputs``/``outputs`` are the manifest's tensor specs, in call order; ExecuTorch programs are
    exported with static shapes, and a feed of another shape is refused with the expected one named.
    """

    def __init__(self, path: str | Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise PocketdiffError(f"ExecuTorch program {path} does not exist")
        from executorch.extension.pybindings.portable_lib import (_threadpool_get_thread_count,
                                                                 _unsafe_reset_threadpool)
        from executorch.runtime import Runtime  # imports torch: keep lazy

        # The bindings' one process-wide pool (XNNPACK uses it; no public setter in 1.5.1). It is replaced only
        # before a load and only when the count differs: replacing it just after loading a program crashed
        # that program's next run (a segfault in the test suite, once an earlier test had set another count).
        with noise.native_stderr():  # (it logs each reset: noise.KNOWN) and XNNPACK's cpuinfo probe
            if threads and _threadpool_get_thread_count() != threads:
                _unsafe_reset_threadpool(threads)
            try:
                self.method = Runtime.get().load_program(path).load_method("forward")
            except Exception as exc:  # the bindings raise RuntimeError/ValueError for invalid programs
                raise PocketdiffError(f"cannot load ExecuTorch program {path}: {exc}") from None
        self.path = path
        self.inputs, self.outputs = list(inputs), list(outputs)

    @property
    def fixed_batch(self) -> int | None:
        return first_dim(self.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        _check_feeds(self.path, self.inputs, feeds)
        args = []
        for spec in self.inputs:
            x = np.asarray(feeds[spec.name], dtype=spec.dtype)
            x = x if x.flags.c_contiguous else x.copy()  # (np.ascontiguousarray would make a 0-d timestep 1-d)
            if x.shape != spec.shape:
                raise PocketdiffError(f"{self.path}: input {spec.name} has shape {list(x.shape)}; this program was "
                                      f"exported for {list(spec.shape)}")
            args.append(torch.from_numpy(x))
        outs = self.method.execute(args)
        return {spec.name: o.numpy() for spec, o in zip(self.outputs, outs)}


class ShapeSession:
    """Zeros of the declared output shapes, the symbolic (batch) dims taken from the feeds' batch: the
    dry run's stand-in for a model (no weights, no time)."""

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], name: str = "shape session"):
        self.inputs, self.outputs, self.path = list(inputs), list(outputs), name

    @property
    def fixed_batch(self) -> int | None:
        return first_dim(self.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _check_feeds(self.path, self.inputs, feeds)
        batch = next((np.shape(feeds[s.name])[0] for s in self.inputs if s.shape and not isinstance(s.shape[0], int)),
                     self.fixed_batch or 1)
        return {o.name: np.zeros([d if isinstance(d, int) else batch for d in o.shape], np.dtype(o.dtype))
                for o in self.outputs}


def _onnx(path: Path, inputs, outputs, threads: int | None) -> OnnxSession:
    return OnnxSession(path, threads)


def _executorch(path: Path, inputs, outputs, threads: int | None) -> ExecuTorchSession:
    return ExecuTorchSession(path, inputs, outputs, threads)


# backend name (= bundle target) -> opens a session on one bundle component's file, given its declared I/O
BACKENDS = {"onnx": _onnx, "executorch": _executorch}
