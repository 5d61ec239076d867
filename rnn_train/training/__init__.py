"""The training run: learners (torch, NumPy), the loop, its state, schedules, logging, run directories."""
