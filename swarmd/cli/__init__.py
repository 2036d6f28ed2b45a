"""Command-line entry points. ``swarmctl`` must not import torch (it starts fast)."""
