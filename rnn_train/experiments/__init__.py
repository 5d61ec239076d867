"""Experiments on top of the pipeline: grid sweeps with a fixed budget, and the speed benchmark."""
