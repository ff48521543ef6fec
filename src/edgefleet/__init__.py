"""edgefleet: compress one model per device profile, deploy it, keep every device in budget.

The base install is the device agent (``edgefleet.agent``); ``pip install 'edgefleet[controller]'``
adds the controller (``edgefleet.controller``) and the compression library
(``edgefleet.compress``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgefleet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
