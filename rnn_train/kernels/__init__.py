"""Speed kernels: hand-written forward + BPTT for the CPU, chosen explicitly by `model.kernel`."""
