"""Vast's filter language: ``{"field": {"op": value, ...}, ...}``.

The CLI sends numbers as JSON strings (``{"num_gpus": {"gte": "2"}}``), so values are coerced
to the type of the row's value before comparing.
"""

import functools
import heapq
import math

OPS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin")


class QueryError(ValueError):
    """A filter the server rejects (400 invalid_args)."""


def _coerce(value, like):
    """``value`` converted to the type of the row value ``like``."""
    if value is None or like is None:
        return value
    if isinstance(like, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return value
    if isinstance(like, (int, float)):
        if isinstance(value, bool):
            return int(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise QueryError(f"invalid number {value!r}") from None
        if math.isnan(number):
            raise QueryError(f"invalid number {value!r}")
        return number
    if isinstance(like, str) and not isinstance(value, str):
        return str(value)
    return value


def _candidates(field, row_value):
    # "geolocation in [US, CA]" matches "Texas, US" by its country code, as Vast does
    if field == "geolocation" and isinstance(row_value, str) and ", " in row_value:
        return (row_value, row_value.rsplit(", ", 1)[1])
    return (row_value,)


def _compare(op, row_value, value):
    if op == "eq":
        return row_value == value
    if op == "neq":
        return row_value != value
    if row_value is None or value is None:
        return False
    try:
        if op == "gt":
            return row_value > value
        if op == "gte":
            return row_value >= value
        if op == "lt":
            return row_value < value
        return row_value <= value
    except TypeError:
        raise QueryError(f"cannot compare {value!r} with {row_value!r}") from None


def field_matches(field, row_value, conditions) -> bool:
    """Whether one row value satisfies every ``{op: value}`` condition on its field."""
    if not isinstance(conditions, dict):
        conditions = {"eq": conditions}
    for op, value in conditions.items():
        if op not in OPS:
            raise QueryError(f"unknown operator {op!r} on {field}")
        candidates = _candidates(field, row_value)
        if op in ("in", "notin"):
            values = value if isinstance(value, list) else [value]
            hit = any(c == _coerce(v, c) for c in candidates for v in values)
            if hit != (op == "in"):
                return False
        elif not any(_compare(op, c, _coerce(value, c)) for c in candidates):
            return False
    return True


def row_matches(row, filters) -> bool:
    """``filters`` maps field -> conditions; fields missing from the row are ignored."""
    return all(field_matches(f, row[f], c) for f, c in filters.items() if f in row)


def _cmp_values(a, b):
    # None sorts before everything, like NULLS FIRST in ascending order
    if a is None or b is None:
        return (a is not None) - (b is not None)
    try:
        return (a > b) - (a < b)
    except TypeError:
        return (str(a) > str(b)) - (str(a) < str(b))


def compare_keys(a, b, directions) -> int:
    """Three-way comparison of two sort keys under per-column asc/desc directions."""
    for x, y, direction in zip(a, b, directions):
        c = _cmp_values(x, y)
        if c:
            return -c if direction == "desc" else c
    return 0


def sort_rows(rows, key, directions, limit=None):
    """Rows sorted by ``key(row)`` (a tuple) under ``directions``; only the first ``limit``."""
    sort_key = functools.cmp_to_key(lambda a, b: compare_keys(key(a), key(b), directions))
    if limit is None:
        return sorted(rows, key=sort_key)
    return heapq.nsmallest(limit, rows, key=sort_key)  # a page of 25 out of 20,000 rows


def parse_order(order, known):
    """``[[field, "asc"|"desc"], ...]`` restricted to ``known`` fields."""
    if order is None:
        return []
    if not isinstance(order, list):
        raise QueryError("order must be a list of [field, direction]")
    result = []
    for item in order:
        if not (isinstance(item, (list, tuple)) and len(item) in (1, 2) and isinstance(item[0], str)):
            raise QueryError(f"invalid order item {item!r}")
        direction = item[1] if len(item) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise QueryError(f"invalid order direction {direction!r}")
        if item[0] in known:
            result.append((item[0], direction))
    return result


def parse_limit(limit):
    if limit is None:
        return None
    try:
        value = int(float(limit))
    except (TypeError, ValueError):
        raise QueryError(f"invalid limit {limit!r}") from None
    return max(value, 0)
