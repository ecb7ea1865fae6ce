"""The v1 instance list's arguments and keyset pages (see vast-api.md section 3)."""

import base64
import binascii
import json

from .errors import ApiError, invalid_args

# instance columns that select_filters may use; computed ones (dph_total, num_gpus...) are 400
FILTERABLE_INSTANCE_COLUMNS = {
    "id", "machine_id", "host_id", "bundle_id", "actual_status", "intended_status", "cur_state",
    "next_state", "label", "gpu_name", "verification", "image_uuid", "start_date", "geolocation",
}
INSTANCE_PAGE_MAX = 25
INSTANCE_PAGE_DEFAULT_WHEN_NONPOSITIVE = 5


def validate_list(filters, order_by, limit, select_cols):
    """(filters, [(column, direction)], directions, limit, select_cols), checked as Vast checks them."""
    if filters is None:
        filters = {}
    if not isinstance(filters, dict):
        raise invalid_args("select_filters must be an object")
    for column in filters:
        if column not in FILTERABLE_INSTANCE_COLUMNS:
            raise invalid_args(f"cannot filter on column {column!r}")
    order_by = order_by or [{"col": "id", "dir": "asc"}]
    if not isinstance(order_by, list):
        raise invalid_args("order_by must be a list")
    order = []
    for item in order_by:
        if not (isinstance(item, dict) and item.get("col") in FILTERABLE_INSTANCE_COLUMNS
                and item.get("dir", "asc") in ("asc", "desc")):
            raise invalid_args(f"invalid order_by item {item!r}")
        order.append((item["col"], item.get("dir", "asc")))
    if "id" not in [c for c, _ in order]:
        order.append(("id", "asc"))  # a total order makes the page tokens exact
    try:
        limit = INSTANCE_PAGE_MAX if limit is None else int(limit)
    except (TypeError, ValueError):
        raise invalid_args(f"invalid limit {limit!r}") from None
    limit = INSTANCE_PAGE_DEFAULT_WHEN_NONPOSITIVE if limit <= 0 else min(limit, INSTANCE_PAGE_MAX)
    select_cols = select_cols or ["*"]
    if not isinstance(select_cols, list) or not all(isinstance(c, str) for c in select_cols):
        raise invalid_args("select_cols must be a list of column names")
    if "*" in select_cols:
        select_cols = ["*"]
    return filters, order, [d for _, d in order], limit, select_cols


def encode_token(values):
    # keyset pagination: the token is the sort key of the last row returned
    return base64.urlsafe_b64encode(json.dumps({"values": list(values)}).encode()).decode()


def decode_token(token, width):
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode()))["values"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        values = None
    if not isinstance(values, list) or len(values) != width:
        raise ApiError(400, "invalid_token", "Invalid pagination token")
    return tuple(values)
