"""Vast's error answers, and the type checks of request bodies that lead to them."""


class ApiError(Exception):
    """An error response: HTTP status plus the JSON body Vast would send."""

    def __init__(self, status, error, msg, **extra):
        super().__init__(msg)
        self.status = status
        self.body = {"success": False, "error": error, "msg": msg, **extra}


def invalid_args(msg):
    return ApiError(400, "invalid_args", msg)


def invalid_json():
    error = ApiError(400, "invalid_request", "Invalid json body")
    del error.body["success"]  # Vast's body for this one has no "success"
    return error


def no_such_instance():
    return ApiError(404, "no_such_instance", "Instance not found")


def no_such_volume():
    return ApiError(404, "no_such_volume", "Volume with that ID does not exist.")


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
