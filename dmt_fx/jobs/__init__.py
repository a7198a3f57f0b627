"""Jobs: the torchrun launcher, the per-rank worker, synthetic data and model targets."""
