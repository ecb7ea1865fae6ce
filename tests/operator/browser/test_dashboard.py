"""The dashboard (issue 12) in a real headless Chromium (Debian's ``chromium``), against gunicorn and Redis:
what it shows for a tenant's key, what it never shows (another tenant's pools), and what it never sends."""

import re
import shutil
import subprocess
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser

import pytest

from tests.conftest import API_KEYS, wait_until
from tests.operator.conftest import provisioned

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                                         "(apt-get install -y chromium; .ci/run does)")
FAILED_OVER, PLAIN, GLOBEX = 9123, 9124, 9777  # ids no other test uses: the state is shared


class Dom(HTMLParser):
    """The dumped DOM as (tag, attributes) pairs, and its text."""

    def __init__(self, html: str):
        super().__init__()
        self.elements, self.texts = [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.texts.append(data)

    def find(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    @property
    def text(self) -> str:
        return " ".join(self.texts)


def browse(url: str, profile, budget_ms: int = 3000) -> Dom:
    """The page's DOM after its scripts ran for ``budget_ms`` of virtual time."""
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                             "--disable-component-update", "--disable-sync", "--no-first-run",
                             f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return Dom(result.stdout)


@pytest.fixture(scope="module")
def pools(stack, web):
    """acme: a pool that failed over once and one that did not; globex: a pool of its own."""
    provisioned(web, stack, FAILED_OVER, failovers=1)
    provisioned(web, stack, PLAIN)
    provisioned(web, stack, GLOBEX, tenant="globex")
    stack.wait_state(FAILED_OVER, "active")
    return web


def to_fixed(value: float, digits: int) -> str:
    """JavaScript's ``value.toFixed(digits)``: the exact binary value rounded, a tie to the larger."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def settled_costs(web) -> dict:
    """The tenant's pools once each has its standby again (a failover makes a new one) and every price seen."""
    def settled():
        body = web.api("GET", "/api/v1/warmpool/pools").json()
        return all(p["standby_gpu_id"] and p["cost_per_hour"]["complete"] for p in body["pools"]) and body
    return wait_until(settled, timeout=60, message="every pool's standby and prices")


@pytest.mark.timeout(180)
def test_the_tenants_pools_and_a_failovers_phases(stack, pools, tmp_path):
    listed = settled_costs(pools)
    dom = browse(f"{pools.url}/dashboard#key={API_KEYS['acme']}&pool={FAILED_OVER}", tmp_path / "profile")
    body = dom.find("body")[0]
    assert body["data-view"] == "pools", dom.text
    shown = {int(r["data-machine"]): r["data-state"] for r in dom.find("tr") if "data-machine" in r}
    assert set(shown) == {p["machine_id"] for p in stack.store.tenant_pools("acme")}
    assert shown[FAILED_OVER] == shown[PLAIN] == "active"
    assert dom.find("span", **{"class": "state state-active"})  # the state, coloured by its class
    assert GLOBEX not in shown and str(GLOBEX) not in dom.text

    # the cost: a $/h column with each pool's total, its parts in the cell's title, and the tenant's total
    assert "$/h" in dom.text
    titles = [td["title"] for td in dom.find("td", **{"class": "num"}) if td.get("title")]
    assert len(titles) == len(shown)
    for pool in listed["pools"]:
        cost = pool["cost_per_hour"]
        assert cost["total"] > 0 and f"${to_fixed(cost['total'], 3)}" in dom.text
        assert (f"primary ${to_fixed(cost['primary'], 4)}, standby storage ${to_fixed(cost['standby_storage'], 4)}, "
                f"volume ${to_fixed(cost['volume'], 4)}, replica ${to_fixed(cost['replica'], 4)} per hour") in titles
    assert f"({len(shown)}, ${to_fixed(listed['cost_per_hour'], 3)}/h in all)" in dom.text

    # the selected pool's timeline: its events, and the failover's phases as bars
    kinds = [li["data-event"] for li in dom.find("li", **{"class": "event"})]
    assert {"failover_started", "failover_completed", "primary_created"} <= set(kinds)
    phases = {span["data-phase"] for span in dom.find("span") if span.get("data-phase")}
    assert {"fence_old_primary", "start_standby", "promote"} <= phases
    assert re.search(r"start_standby \d+\.\d+ s", dom.text)
    assert "hidden" in dom.find("p", id="select-hint")[0]  # the "Select a machine" hint, done with


@pytest.mark.timeout(180)
def test_another_tenants_key_shows_only_its_pools(stack, pools, tmp_path):
    dom = browse(f"{pools.url}/dashboard#key={API_KEYS['globex']}", tmp_path / "profile")
    shown = {int(r["data-machine"]) for r in dom.find("tr") if "data-machine" in r}
    assert GLOBEX in shown and shown == {p["machine_id"] for p in stack.store.tenant_pools("globex")}
    assert str(FAILED_OVER) not in dom.text and str(PLAIN) not in dom.text
    assert "hidden" not in dom.find("p", id="select-hint")[0]  # nothing selected yet: the hint shows


@pytest.mark.timeout(180)
def test_without_a_good_key_the_page_asks_for_one(pools, tmp_path):
    dom = browse(f"{pools.url}/dashboard", tmp_path / "first")
    assert dom.find("body")[0]["data-view"] == "login" and "hidden" not in dom.find("form")[0]
    dom = browse(f"{pools.url}/dashboard#key=not-a-key", tmp_path / "second")
    assert dom.find("body")[0]["data-view"] == "login" and "The API refused this key" in dom.text
    assert not dom.find("tr", **{"data-state": "active"})


@pytest.mark.timeout(180)
def test_the_page_refreshes_itself_and_never_sends_the_key_in_a_url(pools, tmp_path):
    dom = browse(f"{pools.url}/dashboard#key={API_KEYS['acme']}", tmp_path / "profile", budget_ms=12000)
    assert int(dom.find("body")[0]["data-refreshes"]) >= 2  # one load, then every 5 s
    log = pools.log.read_text()
    assert "GET /dashboard " in log and "GET /api/v1/warmpool/pools " in log
    assert API_KEYS["acme"] not in log and "key=" not in log
