"""Using a trained model: prefix warm-up, next-character distributions, K-step generation
(NumPy steps, batched samples, stopping rules) and scoring a text."""
