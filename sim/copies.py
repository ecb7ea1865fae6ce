"""Copying volumes, as the official CLI asks for it, and the data version that a copy carries.

Contents are modelled as a number: ``data_version`` goes up by one with every write
(``POST /_sim/volumes/<id>/write``). A copy carries the source's version *as it was when the copy
started* to the destination once it completes, after a delay that grows with the source's size.

- ``vastai copy V.<src>:/path V.<dst>:/path`` -> ``PUT /api/v0/commands/copy_direct/``
  ``{"client_id": "me", "src_id": "V.<src>", "dst_id": "V.<dst>", "src_path", "dst_path"}``;
  the paths are accepted, the whole volume's version moves.
- ``vastai clone volume <src> <volume offer> [-s GB]`` -> ``POST /api/v0/volumes/copy/``
  ``{"src_id": <volume id>, "dst_id": <volume offer id>, "size"?}``: a new volume on the offer's
  machine (a replica on another host), filled by a copy.
- ``vastai cancel copy V.<dst>`` -> ``DELETE /api/v0/commands/copy_direct/`` ``{"dst_id": ...}``.

Vast has no call that reports a copy's progress (the CLI says to watch the status bar), so the
destination's row in ``GET /api/v0/volumes`` shows ``status`` "copying" until the copy completes,
and the ledger shows each volume's ``data_version`` and its last ``copy``. Both machines must be
online to start; a copy whose source or destination machine fails, or whose source is deleted,
before it completes never completes (it stays "copying" for Vast, "lost" in the ledger).
"""

from . import accounts
from .errors import ApiError, invalid_args, invalid_json, is_int, is_number, no_such_volume
from .volumes import Copy, Volume

# at time scale 1, a copy takes COPY_BASE_SECONDS plus COPY_SECONDS_PER_GB for each GB of the source
COPY_BASE_SECONDS = 5.0
COPY_SECONDS_PER_GB = 2.0


def _volume_ref(value, what):
    """The id in a CLI location "V.<id>"; other kinds of location are not simulated."""
    if isinstance(value, str) and value.startswith("V.") and value[2:].isdigit():
        return int(value[2:])
    raise invalid_args(f"{what} must be a volume, V.<id>: the simulator copies only volume to volume")


class Copies:
    def __init__(self, hosts, offers, volumes, clock, lock):
        self.hosts, self.offers, self.volumes, self.clock, self.lock = hosts, offers, volumes, clock, lock
        self.recount()

    def recount(self):
        """Find the copies under way (the per-request check looks only at those, not at every volume)."""
        self.in_flight = {v.id for v in self.volumes.by_id.values() if v.copy is not None and v.copy.state == "copying"}

    def _volume(self, vid) -> Volume:
        volume = self.volumes.by_id.get(vid)
        if volume is None or not accounts.visible(volume.account):
            raise no_such_volume()
        return volume

    def _offline(self, *volumes: Volume):
        """A refusal (a 200 with success false, as Vast answers copy commands) if a machine is down."""
        for volume in volumes:
            if self.hosts[volume.machine_id].failed:
                return {"success": False, "error": "machine_offline",
                        "msg": f"Machine {volume.machine_id} of volume {volume.id} is offline."}
        return None

    def _begin(self, src: Volume, dst: Volume, now):
        seconds = self.clock.delay(COPY_BASE_SECONDS + COPY_SECONDS_PER_GB * src.size)
        dst.copy = Copy(src_id=src.id, data_version=src.data_version, started_at=now, done_at=now + seconds)
        self.in_flight.add(dst.id)

    def copy_direct(self, body):
        """``PUT /api/v0/commands/copy_direct/``: copy one volume onto another."""
        src_id, dst_id = _volume_ref(body.get("src_id"), "src_id"), _volume_ref(body.get("dst_id"), "dst_id")
        for key in ("src_path", "dst_path"):
            if not isinstance(body.get(key, "/"), str):
                raise invalid_args(f"{key} must be a path")
        if src_id == dst_id:
            raise invalid_args("source and destination are the same volume")
        with self.lock:
            src, dst = self._volume(src_id), self._volume(dst_id)
            refused = self._offline(src, dst)
            if refused:
                return refused
            self._begin(src, dst, self.clock.now())
        return {"success": True, "msg": "Remote to Remote copy initiated"}

    def clone(self, body):
        """``POST /api/v0/volumes/copy/``: a new volume on a volume offer, filled from an existing one."""
        if not isinstance(body, dict):
            raise invalid_json()
        src_id, offer_id, size = body.get("src_id"), body.get("dst_id"), body.get("size")
        if not is_int(src_id):
            raise invalid_args("src_id must be the id of the volume to clone")
        if not is_int(offer_id):
            raise invalid_args("dst_id must be the id of a volume offer")
        if size is not None and (not is_number(size) or size <= 0):
            raise invalid_args("size must be a positive number of GB")
        with self.lock:
            src = self._volume(src_id)
            host = self.offers.volume_offer(offer_id)
            if host is None:
                raise ApiError(404, "no_such_ask", f"Volume offer {offer_id} is not available.")
            size = src.size if size is None else size
            if size < src.size:
                raise invalid_args(f"size {size} is smaller than the source volume's {src.size} GB")
            if size > host.volume_free:
                raise invalid_args(f"Volume size {size} exceeds the {host.volume_free} GB available.")
            refused = self._offline(src)
            if refused:
                return refused
            now = self.clock.now()
            dst = self.volumes.by_id[self.volumes.add(host, size, None, now)]
            self._begin(src, dst, now)
        return {"success": True, "volume_name": f"V.{dst.id}"}

    def cancel(self, body):
        """``DELETE /api/v0/commands/copy_direct/``: stop the copy into a volume."""
        dst_id = _volume_ref(body.get("dst_id"), "dst_id")
        with self.lock:
            dst = self._volume(dst_id)
            if dst.copy is None or dst.copy.state not in ("copying", "lost"):
                return {"success": False, "msg": f"No copy in progress to V.{dst_id}"}
            dst.copy.state = "cancelled"
            self.in_flight.discard(dst_id)
        return {"success": True}

    def host_failed(self, machine_id):
        """Copies from or to a machine that just failed never complete."""
        with self.lock:
            for dst in self._under_way():
                src = self.volumes.by_id.get(dst.copy.src_id)
                if machine_id in (dst.machine_id, src.machine_id if src else None):
                    dst.copy.state = "lost"
                    self.in_flight.discard(dst.id)

    def _under_way(self):
        """Volumes receiving a copy; forgets those deleted since."""
        self.in_flight = {vid for vid in self.in_flight if vid in self.volumes.by_id}
        return [self.volumes.by_id[vid] for vid in sorted(self.in_flight)]

    def complete(self, now):
        """Land the copies that are due; returns whether any changed.

        Runs before every request, so a copy whose source is missing when it comes due lost its
        source before it could complete.
        """
        changed = False
        with self.lock:
            for dst in self._under_way():
                copy = dst.copy
                if copy.done_at > now:
                    continue
                if copy.src_id in self.volumes.by_id:
                    copy.state = "done"
                    dst.data_version = copy.data_version
                else:
                    copy.state = "lost"
                self.in_flight.discard(dst.id)
                changed = True
        return changed
