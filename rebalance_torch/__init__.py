"""PyTorch side: the same formulas as `rebalance_ref` under the same names (autograd), the student models,
the teachers, the data loaders and the two-stage trainer."""
