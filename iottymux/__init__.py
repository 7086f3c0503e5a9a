"""iottymux: the per-pod stdio multiplexer of rktlet.

It turns every app's stdout/stderr or TTY into CRI plaintext log files and live
attach streams.  Everything in this package is importable by the per-pod monitor,
so it depends on the standard library only.
"""

__version__ = "0.1.0"
