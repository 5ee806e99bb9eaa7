"""The `pinnace` command: the front door to every layer below."""

__version__ = "0.1.0"
