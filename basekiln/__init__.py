"""basekiln: rebuild container base images from Debian packages, reproducibly."""

__version__ = "0.1.0"
