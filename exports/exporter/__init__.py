"""The torch side of a bundle: export a trained student to ONNX (`export`) and check the graphs against torch
(`verify`). It may import torch and the serving side, never the reverse."""
