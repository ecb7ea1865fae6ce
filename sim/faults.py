"""The gate every Vast request passes first: request counts, per-route rate limits, injected faults.

Two kinds of fault, both set with ``POST /_sim/faults`` (which replaces the whole set):

- global rates on every Vast route: ``error_rate`` (503), ``rate_limit_rate`` (429), ``latency_ms``;
- per-route specs under ``routes``, keyed "METHOD /template/" as /_sim/stats counts them:
  ``latency_ms``, ``error_rate`` (503, nothing applied), ``lose_answer`` (applied, then a
  gateway's 504), ``hold_s`` (applied, answer held that long) and ``times`` (only the next N
  matching calls, then the spec clears itself).

A request's fate is decided here before it is handled, so an injected error never has a side
effect, and a lost or held answer always has one.
"""

import random
import threading
from collections import Counter
from dataclasses import asdict, dataclass

from .errors import invalid_args, is_int

GLOBAL_FAULT_KEYS = ("error_rate", "rate_limit_rate", "latency_ms")


def route_key(route):
    """"put /api/v0/asks/{id}" and "PUT /api/v0/asks/{id}/" name the same route."""
    method, _, path = route.strip().partition(" ")
    return f"{method.upper()} {path.strip().rstrip('/')}"


@dataclass
class RouteFault:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    lose_answer: float = 0.0  # a probability; true means 1
    hold_s: float = 0.0
    times: int | None = None  # None: until replaced


@dataclass
class Verdict:
    """What happens to one request: ``reject`` is None (handle it) or (kind, threshold)."""
    latency: float = 0.0
    reject: tuple | None = None
    lose_answer: bool = False
    hold: float = 0.0


def _non_negative(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise invalid_args(f"{what} must be a non-negative number")
    return float(value)


def _rate(value, what):
    rate = _non_negative(1.0 if value is True else 0.0 if value is False else value, what)
    if rate > 1:
        raise invalid_args(f"{what} must be between 0 and 1")
    return rate


def _route_fault(route, spec):
    if not isinstance(spec, dict):
        raise invalid_args(f"the fault for {route!r} must be an object")
    unknown = set(spec) - {"latency_ms", "error_rate", "lose_answer", "hold_s", "times"}
    if unknown:
        raise invalid_args(f"unknown fault keys for {route!r}: {sorted(unknown)}")
    times = spec.get("times")
    if times is not None and not (is_int(times) and times > 0):
        raise invalid_args(f"times for {route!r} must be a positive integer")
    return RouteFault(
        latency_ms=_non_negative(spec.get("latency_ms", 0), f"latency_ms for {route!r}"),
        error_rate=_rate(spec.get("error_rate", 0), f"error_rate for {route!r}"),
        lose_answer=_rate(spec.get("lose_answer", 0), f"lose_answer for {route!r}"),
        hold_s=_non_negative(spec.get("hold_s", 0), f"hold_s for {route!r}"),
        times=times,
    )


class Faults:
    def __init__(self, seed=0):
        self.seed = seed
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.request_counts = Counter()
            self.account_counts: dict[str, Counter] = {}  # account -> route -> requests
            self.counts = Counter()  # rate_limited, errors_injected, answers_lost, answers_held
            self.rates = dict.fromkeys(GLOBAL_FAULT_KEYS, 0.0)
            self.routes: dict[str, RouteFault] = {}
            self.rng = random.Random(self.seed)
            self.route_intervals: dict[str, float] = {}
            self.route_last_call: dict[tuple[str | None, str], float] = {}  # (account, route) -> last call

    def set_faults(self, body, known_routes):
        """Replace every fault; ``known_routes`` are the "METHOD /template/" names of the Vast routes."""
        unknown = set(body) - {*GLOBAL_FAULT_KEYS, "routes"}
        if unknown:
            raise invalid_args(f"unknown fault keys {sorted(unknown)}")
        rates = {key: _non_negative(body.get(key, 0), key) for key in GLOBAL_FAULT_KEYS}
        routes_body = body.get("routes") or {}
        if not isinstance(routes_body, dict):
            raise invalid_args("routes must map 'METHOD /route/' to a fault")
        known = {route_key(r) for r in known_routes}
        routes = {}
        for route, spec in routes_body.items():
            key = route_key(route) if isinstance(route, str) else None
            if key not in known:
                raise invalid_args(f"unknown route {route!r}; routes are {sorted(known_routes)}")
            routes[key] = _route_fault(route, spec)
        with self.lock:
            self.rates, self.routes = rates, routes
        return self.active()

    def active(self):
        with self.lock:
            return {**self.rates, "routes": {key: asdict(fault) for key, fault in self.routes.items()}}

    def set_route_intervals(self, body):
        intervals = {route_key(route): _non_negative(value, f"interval for {route!r}")
                     for route, value in body.items()}
        with self.lock:
            self.route_intervals = intervals
            self.route_last_call = {}
        return body

    def admit(self, route, now, account=None) -> Verdict:
        """Count a request to ``route`` ("METHOD /template/") by ``account`` and decide its fate.

        In order: the route's minimum interval for that account (429 with its threshold: Vast limits each
        API key apart), the global rates, then the route's own fault; a request turned away earlier does
        not use up the route's ``times``.
        """
        with self.lock:
            self.request_counts[route] += 1
            if account is not None:
                self.account_counts.setdefault(account, Counter())[route] += 1
            verdict = Verdict(latency=self.rates["latency_ms"] / 1000.0)
            key = route_key(route)
            interval = self.route_intervals.get(key)
            if interval is not None:
                last = self.route_last_call.get((account, key))
                if last is not None and now - last < interval:
                    self.counts["rate_limited"] += 1
                    verdict.reject = ("threshold", interval)
                    return verdict
                self.route_last_call[(account, key)] = now
            roll = self.rng.random()
            if roll < self.rates["rate_limit_rate"]:
                self.counts["rate_limited"] += 1
                verdict.reject = ("rate_limited", None)
            elif roll < self.rates["rate_limit_rate"] + self.rates["error_rate"]:
                self.counts["errors_injected"] += 1
                verdict.reject = ("error", None)
            elif (fault := self.routes.get(key)) is not None:
                self._apply(key, fault, verdict)
            return verdict

    def _apply(self, key, fault: RouteFault, verdict: Verdict):
        if fault.times is not None:
            fault.times -= 1
            if fault.times == 0:
                del self.routes[key]
        verdict.latency += fault.latency_ms / 1000.0
        if self.rng.random() < fault.error_rate:
            self.counts["errors_injected"] += 1
            verdict.reject = ("error", None)
            return
        verdict.lose_answer = self.rng.random() < fault.lose_answer
        verdict.hold = fault.hold_s
        self.counts["answers_lost"] += verdict.lose_answer
        self.counts["answers_held"] += verdict.hold > 0

    def stats(self):
        with self.lock:
            return {"requests": dict(self.request_counts),
                    "requests_by_account": {who: dict(counts) for who, counts in self.account_counts.items()},
                    **{k: self.counts[k] for k in ("rate_limited", "errors_injected", "answers_lost", "answers_held")}}
