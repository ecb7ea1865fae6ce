"""Swagger UI works offline: its page and every file it loads come from this server, not a CDN."""

import re

import pytest

from app import create_app


@pytest.fixture(scope="module")
def client():
    return create_app().test_client()


@pytest.mark.parametrize("path", ["/api/v1/docs", "/api/v1/docs/"])
def test_swagger_ui_loads_only_files_this_server_serves(client, path):
    page = client.get(path)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.get_data(as_text=True))
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for asset in assets:
        assert asset.startswith("/api/v1/docs/"), asset  # no CDN
        served = client.get(asset)
        assert served.status_code == 200 and len(served.data) > 1000, asset
        served.close()
    assert "/api/v1/openapi.json" in page.get_data(as_text=True)


def test_an_unknown_docs_file_is_a_404(client):
    rv = client.get("/api/v1/docs/assets/nothing.js")
    assert rv.status_code == 404 and rv.json["code"] == 404
