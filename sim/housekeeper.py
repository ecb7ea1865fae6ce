"""A background thread for what comes due without a request, and for the last save at shutdown.

Requests already apply what is due before they are handled; this thread also does it when no
request comes, so a rental ends, a copy lands and a webhook goes out on time in an idle simulator.
"""

import threading

TICK_SECONDS = 0.1


class Housekeeper:
    def __init__(self, world, state_file=None):
        self.world, self.state_file = world, state_file
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sim-housekeeper", daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        """Stop ticking and save the world one last time."""
        self.stopping.set()
        self.thread.join()
        if self.state_file is not None:
            self.state_file.save(self.world)

    def _run(self):
        while not self.stopping.wait(TICK_SECONDS):
            if self.world.tick() and self.state_file is not None:
                self.state_file.save(self.world)
