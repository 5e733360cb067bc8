"""Bundles: `exporter/` writes and verifies them (torch side); `serving/` loads and searches them with NumPy and
onnxruntime alone. The two are kept apart so that serving runs where torch is not installed."""
