"""gapeval: score super-resolved Sentinel-2 against real high-resolution targets and measure domain gaps."""

__version__ = "0.1.0"
