"""The embedded cluster: a real control plane and kvtool's runtime on one machine."""
