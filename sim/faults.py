"""The gate every Vast request passes first: request counts, per-route rate limits, injected faults.

Faults are decided before a request is handled, so an injected error never has a side effect.
"""

import random
import threading
from collections import Counter

from .errors import invalid_args

GLOBAL_FAULT_KEYS = ("error_rate", "rate_limit_rate", "latency_ms")


def route_key(route):
    # "PUT /api/v0/asks/{id}" and "PUT /api/v0/asks/{id}/" name the same route
    return route.strip().rstrip("/")


def _non_negative(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise invalid_args(f"{what} must be a non-negative number")
    return float(value)


class Faults:
    def __init__(self, seed=0):
        self.seed = seed
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.request_counts = Counter()
            self.rate_limited = 0
            self.errors_injected = 0
            self.rates = dict.fromkeys(GLOBAL_FAULT_KEYS, 0.0)
            self.rng = random.Random(self.seed)
            self.route_intervals: dict[str, float] = {}
            self.route_last_call: dict[str, float] = {}

    def set_faults(self, body):
        rates = {key: _non_negative(body.get(key, 0), key) for key in GLOBAL_FAULT_KEYS}
        with self.lock:
            self.rates = rates
        return rates

    def set_route_intervals(self, body):
        intervals = {route_key(route): _non_negative(value, f"interval for {route!r}")
                     for route, value in body.items()}
        with self.lock:
            self.route_intervals = intervals
            self.route_last_call = {}
        return body

    def admit(self, route, now):
        """Count a request to ``route`` ("METHOD /template/") and decide its fate first.

        Returns None to handle it, or ("threshold", interval) / ("rate_limited", None) /
        ("error", None) for an injected response, plus the latency to add.
        """
        with self.lock:
            self.request_counts[route] += 1
            latency = self.rates["latency_ms"] / 1000.0
            key = route_key(route)
            interval = self.route_intervals.get(key)
            if interval is not None:
                last = self.route_last_call.get(key)
                if last is not None and now - last < interval:
                    self.rate_limited += 1
                    return ("threshold", interval), latency
                self.route_last_call[key] = now
            roll = self.rng.random()
            if roll < self.rates["rate_limit_rate"]:
                self.rate_limited += 1
                return ("rate_limited", None), latency
            if roll < self.rates["rate_limit_rate"] + self.rates["error_rate"]:
                self.errors_injected += 1
                return ("error", None), latency
            return None, latency

    def stats(self):
        with self.lock:
            return {"requests": dict(self.request_counts), "rate_limited": self.rate_limited,
                    "errors_injected": self.errors_injected}
