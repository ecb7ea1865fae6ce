"""The HTTP API (flask-smorest): one blueprint per resource, one error shape."""

from flask_smorest import Api

api = Api()
