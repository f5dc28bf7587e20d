"""Backend sessions: run one exported component on named numpy inputs, get named numpy outputs.

- :class:`OnnxSession`: onnxruntime (CPU execution provider).
- :class:`ExecuTorchSession`: ExecuTorch's Python runtime on a ``.pte``. Its bindings import torch,
  so it is imported lazily, inside the session; ``import pocketdiff.runtime`` and the ONNX path
  stay torch-free. Phone apps use ExecuTorch's C++/Java runtime on the same file.

A session casts each input to the dtype the graph declares, so callers pass natural numpy types
(int ids, float32 latents, a float timestep) whatever the exporter chose. ``BACKENDS`` is the one
registry of backend names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pocketdiff.errors import PocketdiffError

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int32)": np.int32, "tensor(int64)": np.int64,
}


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
        self.input_dtypes = {i.name: _ORT_DTYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(self.input_dtypes) - set(feeds)
        if missing:
            raise PocketdiffError(f"{self.path}: missing inputs {sorted(missing)}")
        cast = {name: np.asarray(feeds[name], dtype=dtype) for name, dtype in self.input_dtypes.items()}
        return dict(zip(self.output_names, self.session.run(None, cast)))


class ExecuTorchSession:
    """An ExecuTorch program's ``forward`` with named numpy inputs and outputs.

    ``inputs``/``outputs`` are the manifest's tensor specs (name, shape, dtype), in call order;
    ExecuTorch programs are exported with static shapes, and a feed of another shape is refused
    with the expected one named.
    """

    def __init__(self, path: str | Path, inputs: list[dict], outputs: list[dict], threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise PocketdiffError(f"ExecuTorch program {path} does not exist")
        from executorch.runtime import Runtime  # imports torch: keep lazy

        try:
            self.method = Runtime.get().load_program(path).load_method("forward")
        except Exception as exc:  # the bindings raise RuntimeError/ValueError for invalid programs
            raise PocketdiffError(f"cannot load ExecuTorch program {path}: {exc}") from None
        if threads:  # the bindings' one process-wide pool (XNNPACK uses it); no public setter in 1.5.1
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        self.path = path
        self.inputs = [(i["name"], tuple(i["shape"]), np.dtype(i["dtype"])) for i in inputs]
        self.input_dtypes = {name: dtype for name, _, dtype in self.inputs}
        self.output_names = [o["name"] for o in outputs]

    @property
    def fixed_batch(self) -> int:
        return self.inputs[0][1][0]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        missing = set(self.input_dtypes) - set(feeds)
        if missing:
            raise PocketdiffError(f"{self.path}: missing inputs {sorted(missing)}")
        args = []
        for name, shape, dtype in self.inputs:
            x = np.asarray(feeds[name], dtype=dtype)
            x = x if x.flags.c_contiguous else x.copy()  # (np.ascontiguousarray would make a 0-d timestep 1-d)
            if x.shape != shape:
                raise PocketdiffError(f"{self.path}: input {name} has shape {list(x.shape)}; this program was "
                                      f"exported for {list(shape)}")
            args.append(torch.from_numpy(x))
        outs = self.method.execute(args)
        return {name: o.numpy() for name, o in zip(self.output_names, outs)}


def _onnx(path: Path, component, threads: int | None) -> OnnxSession:
    return OnnxSession(path, threads)


def _executorch(path: Path, component, threads: int | None) -> ExecuTorchSession:
    return ExecuTorchSession(path, component.inputs, component.outputs, threads)


# backend name (= bundle target) -> opens a session for one bundle component (runtime/bundle.py)
BACKENDS = {"onnx": _onnx, "executorch": _executorch}
