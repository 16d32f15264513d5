"""Container images for the docker backend: the Debian-built base image (`base`) and the
environment images that runners run (`build`). See docs/docker.md.

This package's modules need the `falrt[server]` extra (the docker SDK); the defaults below
do not, so the CLI shows them in its help without it."""

DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
