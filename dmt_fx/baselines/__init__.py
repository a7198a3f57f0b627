"""The TorchRec plans a user would pick instead of DMT (flat DMP plans, hand-built towers)."""
