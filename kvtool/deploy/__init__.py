"""Deploying kvtool onto a cluster: the manifests (generated, one source) and install/uninstall."""
