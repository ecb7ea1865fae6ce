"""Flower's settings. Flower reads ./flowerconfig.py itself when started from the repository root
(the Procfile, docker-compose.yml, warmpool dev); flags on its command line still win.

FLOWER_ADDRESS is where operators reach Flower: 127.0.0.1 unless set. Flower shows every task's
arguments and can revoke tasks, so it refuses to be reachable from anywhere else without
FLOWER_BASIC_AUTH (``user:password``, comma-separated for more users). Both are read through
``Settings`` (app/settings.py), as every other setting is.
"""

import ipaddress
import sys

from app import runtime


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


_settings = runtime.settings()
address = _settings.flower_address
# ms Flower waits for the workers' answers to its inspect calls: a worker busy at start (or on a loaded
# machine) answers after Flower's default 1 s, and Flower then logs "Inspect method ... failed"
inspect_timeout = 10000.0
if not is_loopback(address) and not _settings.flower_basic_auth:
    sys.exit(f"flower: FLOWER_ADDRESS={address} makes Flower reachable from other machines; "
             "set FLOWER_BASIC_AUTH=user:password too")
