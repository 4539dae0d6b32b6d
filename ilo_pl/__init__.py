"""ilo-pl: Intermediate Layer Optimization for inverse problems, on PyTorch Lightning."""

__version__ = "0.1.0"
