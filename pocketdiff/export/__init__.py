"""Exporters (ONNX now; Core ML and ExecuTorch next) and the one parity check they all use."""
