"""Vast.ai simulator: an HTTP server speaking the subset of the Vast.ai API that warmpool uses.

See vast-api.md in the shared docs for the real API it mimics; the timing
constants live in ``sim.state``.
"""

from .server import create_app, serve, start_in_thread

__all__ = ["create_app", "serve", "start_in_thread"]
