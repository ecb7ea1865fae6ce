"""The pool dashboard at /dashboard: one static page that calls the API from the browser.

The page holds no data and needs no key: its script reads the key from the URL
fragment (``#key=...``, which browsers never send) or a form, keeps it in
sessionStorage and calls /api/v1/warmpool with it. Everything is served from
app/static/dashboard (no CDN, no build step); the CSP allows nothing else.
"""

from flask import Blueprint

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", static_folder="static/dashboard",
               static_url_path="/static")

POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@bp.get("")
def page():
    return bp.send_static_file("index.html")


@bp.after_request
def lock_down(response):
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
