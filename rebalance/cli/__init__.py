"""The `rebalance` command line: one click group whose commands live in `cmd_*.py` modules.

The group itself imports neither torch nor onnxruntime, so torch-free commands (`search`, `env`) work on a
machine with only numpy + onnxruntime installed. Each command imports what it needs inside its body.
"""
