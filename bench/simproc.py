"""The simulator in its own process, plus bench-only routes.

``python -m bench.simproc --port P --time-scale X --seed N``

It is the product's simulator (``sim.create_app``) with extra ``/_bench/`` routes:
``POST /_bench/seed_pools`` puts a running primary and a stopped standby per pool
straight into the simulator's ``World`` on the tenant's account (no GPU accounting, already past loading), so
thousands of pools can be seeded in a second; others count answers by route, list the
hosts, and read or start/stop one instance outside the Vast routes' rate limits. A
separate process keeps the simulator's CPU time out of the benchmark process's GIL.
"""

import argparse
import logging
import threading
from collections import Counter

from flask import jsonify, request
from werkzeug.serving import WSGIRequestHandler, make_server

from sim import create_app
from sim.lifecycle import Instance
from sim.routes.base import route_name


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


def build(time_scale: float, seed: int):
    app = create_app(time_scale=time_scale, seed=seed)
    world = app.extensions["sim_world"]

    @app.post("/_bench/seed_pools")
    def seed_pools():
        body = request.get_json()
        tenant, machines, account = body["tenant"], body["machines"], body["account"]
        rows = []
        instances = world.instances
        with world.lock:
            now = world.clock.now()
            hosts = [h for h in world.hosts.values() if not h.failed]
            for n, machine in enumerate(machines, body.get("first_host", 0)):  # seeded apart: on other hosts
                host = hosts[n % len(hosts)]
                ids = []
                for role, intended in (("primary", "running"), ("standby", "stopped")):
                    iid = instances.next_id
                    instances.next_id += 1
                    instances.by_id[iid] = Instance(
                        id=iid, machine_id=host.machine_id, num_gpus=1, bundle_id=host.machine_id * 100 + 1,
                        dph_base=host.gpu_price, image="bench/image", label=f"warmpool-{tenant}-{machine}-{role}",
                        disk=10.0, onstart=None, env={}, runtype="ssh", start_date=now, api_key="bench",
                        end_date=world.offers.end_date(),
                        intended=intended, phase="create" if intended == "running" else "create_stopped",
                        phase_at=now - 1e6,  # long past loading: running (or stopped) already
                        account=account)  # the account the service's key for the tenant opens
                    instances.track_end_date(instances.by_id[iid])
                    instances.created_by_label[instances.by_id[iid].label] += 1
                    ids.append(iid)
                rows.append([machine, host.machine_id, ids[0], ids[1]])
        return jsonify(rows=rows)

    # responses by route and status, so a benchmark can tell 429s per route apart
    responses, responses_lock = Counter(), threading.Lock()

    @app.after_request
    def count_response(response):
        if request.endpoint and not request.path.startswith(("/_sim", "/_bench")):
            with responses_lock:
                responses[f"{route_name(request.endpoint)} {response.status_code}"] += 1
        return response

    @app.get("/_bench/responses")
    def responses_view():
        with responses_lock:
            return jsonify(dict(responses))

    @app.get("/_bench/hosts")
    def hosts_view():
        with world.lock:
            return jsonify(hosts=[{"machine_id": h.machine_id, "free_gpus": h.free_gpus, "total_gpus": h.total_gpus,
                                   "gpu_name": h.gpu_name, "volume_free": h.volume_free}
                                  for h in world.hosts.values()])

    # an instance read and changed as the Vast routes do, but outside their rate limits: the benchmark's
    # own watching and its floor measurement must not use up the service's budget at the provider
    @app.get("/_bench/instances/<int:instance_id>")
    def instance_view(instance_id):
        return jsonify(instances=world.instances.get(instance_id))

    @app.post("/_bench/instances/<int:instance_id>/state")
    def instance_state(instance_id):
        return jsonify(world.instances.set_state(instance_id, request.get_json()["state"]))

    # a correlated failure: every instance given goes offline in the same instant (one lock held)
    @app.post("/_bench/fail")
    def fail_many():
        ids = request.get_json()["ids"]
        with world.lock:
            for instance_id in ids:
                world.instances.fail(instance_id)
        return jsonify(failed=len(ids))

    @app.post("/_bench/statuses")
    def statuses():
        ids = request.get_json()["ids"]
        with world.lock:
            return jsonify({str(i): (world.instances.get(i) or {}).get("actual_status") for i in ids})

    @app.get("/_bench/count")
    def count():
        with world.lock:
            return jsonify(instances=len(world.instances.by_id))

    return app


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    server = make_server("127.0.0.1", args.port, build(args.time_scale, args.seed), threaded=True,
                         request_handler=_Quiet)
    server.serve_forever()


if __name__ == "__main__":
    main()
