"""Sleepwell: an image-generation API that lets its operators sleep."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sleepwell")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"
