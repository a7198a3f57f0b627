"""Built-in models: the default DLRM of the main job and the benchmark models."""
