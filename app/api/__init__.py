"""The HTTP API (flask-smorest): one blueprint per resource, one error shape."""

from collections.abc import Callable
from typing import NoReturn

import flask_smorest
from flask_smorest import Api
from webargs.flaskparser import FlaskParser, is_json_request

api = Api()
# flask-smorest's abort, typed as what it does: it raises (the library has no type hints)
abort: Callable[..., NoReturn] = flask_smorest.abort


class JSONParser(FlaskParser):
    """webargs' parser, stricter about bodies: one sent without a JSON content type is refused
    (415) rather than ignored, and JSON nested past Python's recursion limit is invalid (400)."""

    def _raw_load_json(self, req):
        if not is_json_request(req) and req.get_data(cache=True):
            abort(415, message="Send the body as JSON, with Content-Type: application/json")
        try:
            return super()._raw_load_json(req)
        except RecursionError:
            abort(400, message="Invalid JSON body: nested too deeply")


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = JSONParser()
