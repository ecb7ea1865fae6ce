"""Starting local processes: a free port, and waiting for a condition with a deadline.

Used by ``warmpool dev``, the tests and the benchmarks.
"""

import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition, timeout: float = 20.0, interval: float = 0.05, message: str = ""):
    """Poll ``condition`` until it returns something truthy; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {message or condition}")
        time.sleep(interval)
