"""fedbench: federated learning on memory-constrained devices, one engine for every method."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
