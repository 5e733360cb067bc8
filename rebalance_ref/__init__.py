"""Pure-NumPy (and SciPy) reference of every formula in the method: relation matrices, distances, losses
with hand-derived gradients, retrieval metrics, the shapes world and the tokenizer. No torch here, ever."""
