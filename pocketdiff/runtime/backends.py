"""Backend sessions: run one exported component on numpy inputs. ONNX Runtime for now.

A session casts each input to the dtype the graph declares, so callers pass natural numpy types
(int ids, float32 latents, a float timestep) whatever the exporter chose.
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

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise PocketdiffError(f"ONNX model {path} does not exist")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
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
