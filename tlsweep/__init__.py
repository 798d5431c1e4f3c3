"""tlsweep: the transfer-learning ladder as Hydra sweeps, tracked in MLflow."""
