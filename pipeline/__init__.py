"""Etude: a DVC-tracked toolkit for symbolic music generation research.

Heavy libraries (torch, great_expectations, symusic) are imported inside the
modules that need them, so `import pipeline` and `etude --help` stay fast.
"""

__version__ = "0.1.0"
