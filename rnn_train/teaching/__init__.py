"""Code for learning BPTT: the NumPy reference cells, the NumPy training backend, gradient-flow reports."""
