"""``warmpool webhooks list|add|rm|test|deliveries|resend|rotate``: a tenant's webhooks from the client.

Each command is one API call (app/api/webhooks.py), with the client's --url, --key and --json and its
exit codes (app/client.py). A URL's query string is not shown in tables: it often holds a token.
"""

from urllib.parse import urlsplit, urlunsplit

import click

from app.client import EXIT_CODES, YES, client_command, confirmed

def show(out, body: dict, text: str) -> None:
    """The API's JSON with --json, else one line."""
    if out.as_json:
        out.json(body)
    else:
        out.line(text)


def shown_url(url: str) -> str:
    """The URL without its query string, which may carry a token."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="…" if parts.query else ""))


@click.group("webhooks", epilog=EXIT_CODES)
def webhooks():
    """This tenant's webhooks: signed deliveries of pool events (Standard Webhooks)."""


@client_command("list")
def list_webhooks(api, out):
    """This tenant's webhooks."""
    body = api.call("GET", "/webhooks")
    if out.as_json:
        return out.json(body)
    out.table(["id", "url", "events", "enabled", "created"],
              [[h["id"], shown_url(h["url"]), ", ".join(h["events"]) if h["events"] else "all",
                "yes" if h["enabled"] else f"no ({h.get('disabled_reason') or 'by request'})", h["created_at"]]
               for h in body["webhooks"]], title=f"{body['count']} webhooks")


@client_command("add")
@click.argument("webhook_url", metavar="URL")
@click.option("--event", "events", multiple=True, help="an event type to send (repeat it); all if left out")
def add(api, out, webhook_url, events):
    """Subscribe URL to pool events; prints the signing secret, shown only this once."""
    body = api.call("POST", "/webhooks", json={"url": webhook_url, "events": list(events) or None})
    show(out, body, f"webhook {body['id']}\nsecret {body['secret']}  (verify deliveries with it; it is not shown "
                    "again)")


@client_command("rm")
@click.argument("webhook_id")
@YES
def remove(api, out, webhook_id, yes):
    """Unsubscribe a webhook; deliveries not yet made are dropped. Asks first on a terminal."""
    confirmed(f"delete webhook {webhook_id} and drop its deliveries not yet made?", "nothing was deleted", yes)
    api.call("DELETE", f"/webhooks/{webhook_id}")
    show(out, {"id": webhook_id, "deleted": True}, f"webhook {webhook_id} deleted")


@client_command("test")
@click.argument("webhook_id")
def test(api, out, webhook_id):
    """Send a webhook a webhook.test event."""
    body = api.call("POST", f"/webhooks/{webhook_id}/test")
    show(out, body, f"delivery {body['id']} queued; see it with: warmpool webhooks deliveries {webhook_id}")


@client_command("deliveries")
@click.argument("webhook_id")
def deliveries(api, out, webhook_id):
    """A webhook's recent deliveries, newest first, with their last attempt."""
    body = api.call("GET", f"/webhooks/{webhook_id}/deliveries")
    if out.as_json:
        return out.json(body)
    rows = []
    for d in body["deliveries"]:
        last = d["attempts"][-1] if d["attempts"] else {}
        made = d.get("attempts_made", len(d["attempts"]))  # the record lists only the latest attempts
        rows.append([d["id"], d["type"], d["machine_id"], d["state"], made, last.get("status_code"),
                     last.get("error"), d.get("next_attempt_at")])
    out.table(["id", "type", "machine", "state", "attempts", "last status", "last error", "next attempt"], rows,
              title=f"{body['count']} deliveries")


@client_command("resend")
@click.argument("webhook_id")
@click.argument("delivery_id")
def resend(api, out, webhook_id, delivery_id):
    """Attempt a delivery again, now."""
    body = api.call("POST", f"/webhooks/{webhook_id}/deliveries/{delivery_id}/resend")
    show(out, body, f"delivery {body['id']} queued again")


@client_command("rotate")
@click.argument("webhook_id")
def rotate(api, out, webhook_id):
    """A new signing secret; the old one still signs deliveries, beside it, for 24 h."""
    body = api.call("POST", f"/webhooks/{webhook_id}/rotate-secret")
    show(out, body, f"secret {body['secret']}  (the previous one also signs deliveries for 24 h)")


for command in (list_webhooks, add, remove, test, deliveries, resend, rotate):
    webhooks.add_command(command)
