"""The task resource: where an accepted operation is polled."""

from flask import g
from flask.views import MethodView

from app import runtime
from app.api import Blueprint, abort
from app.api.auth import authenticate
from app.api.schemas import TaskSchema

blp = Blueprint("tasks", __name__, url_prefix="/api/v1/tasks", description="Operations in flight and done.")
blp.before_request(authenticate)


@blp.route("/<string(length=32):task_id>")
class Task(MethodView):
    @blp.response(200, TaskSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    def get(self, task_id):
        """State, step and result of an operation"""
        op = runtime.store().get_op(task_id)
        if op is None or op["tenant"] != g.tenant:
            abort(404, message=f"No task {task_id}")
        return op
