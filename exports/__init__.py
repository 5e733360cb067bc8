"""ONNX export of the student towers (torch side) and the torch-free onnxruntime retriever."""
