"""Vast.ai simulator: an HTTP server speaking the subset of the Vast.ai API that warmpool uses.

A separate program (``warmpool sim``), never imported by the product. docs/simulator.md lists
its routes; the timing constants live in ``sim.clock``.
"""

from .server import create_app, serve, start_in_thread

__all__ = ["create_app", "serve", "start_in_thread"]
