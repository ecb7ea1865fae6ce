"""A resolver a test controls, for a worker process it starts (tests/operator/test_rebinding.py puts this directory
on that worker's PYTHONPATH; Python imports ``sitecustomize`` at start). Inert unless WARMPOOL_TEST_RESOLVER names
a file.

That file is JSON: ``{"name": ..., "answers": [address, ...], "port": ..., "refused": [address, ...]}``. Each
lookup of ``name`` gets the next of ``answers`` (then the last again), counted in this process; every other name
or address goes to the system's resolver. Each such lookup, and each connection to ``port`` (wherever), is
appended as a JSON line to the file's name plus ``.log``, so the test sees what the worker asked and where it
connected. A connection to a ``refused`` address is refused here, never sent to the network.
"""

import json
import os
import socket
import threading

_FILE = os.environ.get("WARMPOOL_TEST_RESOLVER")

if _FILE:
    _lock = threading.Lock()
    _asked = {"lookups": 0}
    _real_getaddrinfo, _real_connect = socket.getaddrinfo, socket.socket.connect

    def _config() -> dict:
        with open(_FILE) as f:
            return json.load(f)

    def _record(**line) -> None:
        with _lock, open(_FILE + ".log", "a") as log:
            log.write(json.dumps(line) + "\n")

    def getaddrinfo(host, port, *args, **kwargs):
        config = _config()
        if host != config["name"]:
            return _real_getaddrinfo(host, port, *args, **kwargs)
        with _lock:
            _asked["lookups"] += 1
            answers = config["answers"]
            address = answers[min(_asked["lookups"], len(answers)) - 1]
        _record(lookup=host, answer=address)
        return _real_getaddrinfo(address, port, *args, **kwargs)

    def connect(self, address):
        if isinstance(address, tuple) and len(address) >= 2 and address[1] == _config()["port"]:
            _record(connect=address[0], port=address[1])
        if isinstance(address, tuple) and address[0] in _config().get("refused", ()):
            raise ConnectionRefusedError(111, "refused by the test's resolver")
        return _real_connect(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect  # type: ignore[method-assign]
