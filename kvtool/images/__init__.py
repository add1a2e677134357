"""Local VM images: the image store and the tiny-linux guest built from Debian packages."""
