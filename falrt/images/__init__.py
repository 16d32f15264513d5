"""Container images for the docker backend: the Debian-built base image (`base`) and the
environment images that runners run (`build`). See docs/docker.md."""
