"""Local images built from Debian packages: the VM image store and the tiny-linux guest, and the
container images (OCI archives) the embedded cluster's nodes import."""
