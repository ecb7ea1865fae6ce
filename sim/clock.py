"""Simulated time: Vast-like delays, shortened by the time scale, measured on the wall clock.

Every timestamp the simulator stores is wall-clock epoch seconds, so simulated time keeps
following the wall clock across a restart (see ``persistence``); only delays are scaled.
"""

import time

# Vast-like delays in seconds at time_scale 1.0 (each one is multiplied by time_scale).
# create: actual_status "created" for CREATED_SECONDS, then "loading" until LOAD_SECONDS
# (pulling the image), then "running".
CREATED_SECONDS = 2.0
LOAD_SECONDS = 25.0
# start of a stopped instance, once its GPUs are free: "loading" for START_SECONDS, then
# "running". While its GPUs are taken it stays scheduling (actual "stopped", status_msg
# "scheduling ...") for as long as it takes.
START_SECONDS = 10.0
# stop: the GPUs are released at once; actual_status keeps its old value for STOP_SECONDS,
# then becomes "stopped".
STOP_SECONDS = 2.0


class Clock:
    def __init__(self, time_scale=1.0):
        self.time_scale = float(time_scale)
        self.now = time.time
        self.epoch = self.now()  # when the world began: offers are listed for a month from it

    def delay(self, seconds):
        """A Vast delay in seconds, scaled."""
        return seconds * self.time_scale

    def config(self):
        return {
            "time_scale": self.time_scale,
            "created_seconds": self.delay(CREATED_SECONDS), "load_seconds": self.delay(LOAD_SECONDS),
            "start_seconds": self.delay(START_SECONDS), "stop_seconds": self.delay(STOP_SECONDS),
        }
