"""Using a trained model: prefix warm-up, next-character distributions and K-step generation."""
