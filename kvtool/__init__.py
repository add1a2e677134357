"""kvtool: virtual machines next to containers on Kubernetes, from Python."""

__version__ = "0.1.0"
