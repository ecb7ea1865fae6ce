"""Summarize a ``py-spy record -f raw`` file: where the busy samples of a process went.

``python -m bench.pyspy_summary FILE [N]`` prints the top N functions by inclusive and by self
samples, leaving out threads that sleep (lock/condition waits, select, accept, sleeps).
"""

import re
import sys
from collections import Counter

IDLE = re.compile(r"\b(wait|select|poll|accept|sleep|_recv_into|recv_into|readinto|get \(queue|acquire)\b")


def summarize(path: str, top: int = 25) -> str:
    inclusive, own, busy = Counter(), Counter(), 0
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        if IDLE.search(frames[-1]):
            continue
        n = int(count)
        busy += n
        own[_short(frames[-1])] += n
        for frame in set(_short(f) for f in frames):
            inclusive[frame] += n
    out = [f"{busy} busy samples", "inclusive:"]
    out += [f"  {100 * c / busy:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    out += ["self:"] + [f"  {100 * c / busy:5.1f}%  {f}" for f, c in own.most_common(top)]
    return "\n".join(out)


def _short(frame: str) -> str:
    frame = re.sub(r"/[^ ]*/site-packages/", "", frame)
    return re.sub(r"/work/main/", "", frame)


if __name__ == "__main__":
    print(summarize(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25))
