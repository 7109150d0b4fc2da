"""Training: the loop, its objective, schedule and state, the run directory, torchrun, the loss
comparison experiment."""
