"""Multi-GPU hosts on Vast.ai, from the offers search.

Vast lists one offer per machine and GPU count; a machine's free GPUs are its
largest offer, its total GPUs follow from the offer's ``gpu_frac``.
"""

from collections import defaultdict

# a host is picked only when its offers can be rented for this many EXPIRY_MARGINs: rentals end
# (their end_date), and one that ends soon must be replaced before its end
LASTING_MARGINS = 7


def vast_gpu_name(name: str) -> str:
    """Users write RTX_4090; Vast names it "RTX 4090"."""
    return name.replace("_", " ")


def user_gpu_name(name: str) -> str:
    return name.replace(" ", "_")


def offers_query(gpu_name: str | None = None, max_price: float | None = None, verified: bool = True,
                 machine_id: int | None = None, num_gpus: int | None = None,
                 min_duration: float | None = None) -> dict:
    query: dict = {"rentable": {"eq": True}, "rented": {"eq": False}, "order": [["dph_total", "asc"]]}
    if verified:
        query["verified"] = {"eq": True}
    if gpu_name:
        query["gpu_name"] = {"eq": vast_gpu_name(gpu_name)}
    if max_price is not None:
        query["dph_total"] = {"lte": max_price}
    if machine_id is not None:
        query["machine_id"] = {"eq": machine_id}
    if num_gpus is not None:
        query["num_gpus"] = {"eq": num_gpus}
    if min_duration is not None:
        query["duration"] = {"gte": min_duration}  # seconds a rental of the offer can last
    return query


def group_hosts(offers: list[dict], min_gpus: int = 2) -> list[dict]:
    """Group offers by machine into the seed's host rows, best first (cheapest, most reliable)."""
    by_machine = defaultdict(list)
    for offer in offers:
        by_machine[offer["machine_id"]].append(offer)
    hosts = []
    for machine_id, machine_offers in by_machine.items():
        largest = max(machine_offers, key=lambda o: o["num_gpus"])
        singles = [o for o in machine_offers if o["num_gpus"] == 1] or [largest]
        frac = largest.get("gpu_frac") or 1.0
        available = largest["num_gpus"]
        if available < min_gpus:
            continue
        price = sum(o["dph_total"] / o["num_gpus"] for o in singles) / len(singles)
        hosts.append({
            "machine_id": machine_id,
            "total_gpus": max(available, round(available / frac)),
            "available_gpus": available,
            "gpu_name": user_gpu_name(largest["gpu_name"]),
            "avg_price_per_hour": round(price, 4),
            "reliability": largest.get("reliability", largest.get("reliability2", 0.0)),
            "verified": largest.get("verification", "verified") == "verified",
            "geolocation": largest.get("geolocation"),
            "can_create_warm_pool": available >= 2,
            "offers": [{
                "offer_id": o["id"], "machine_id": machine_id, "gpu_name": user_gpu_name(o["gpu_name"]),
                "num_gpus": o["num_gpus"], "price_per_hour": o["dph_total"],
                "reliability": o.get("reliability", o.get("reliability2", 0.0)),
                "verified": o.get("verification", "verified") == "verified",
                "geolocation": o.get("geolocation")} for o in singles],
        })
    hosts.sort(key=lambda h: (h["avg_price_per_hour"], -h["reliability"]))
    return hosts
