"""When a stage should wait a moment before its next batched forward. Pure: times in, a deadline out.

A forward on a GPU costs about the same for 1 session as for 64 (it is bound by reading the weights
and launching kernels), so two half batches cost twice one full batch. Sessions whose next step comes
back quickly (a ring of one node, or an entry next to its stage) fall into two groups that alternate
for ever if the batcher always takes just what is queued. So it waits for sessions that are due back
within a small fraction of a forward; sessions that come back only after a trip around a longer
ring are not waited for (their pipeline stage is the rest of the ring).
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_WAIT_S = 0.02  # never hold a batch back longer than this
WAIT_FRACTION = 0.25  # nor longer than this fraction of the last forward
GAP_SMOOTHING = 0.3  # weight of the newest gap in a session's running estimate


def next_gap(previous: float | None, observed: float) -> float:
    """Running estimate of how long a session's next step takes to arrive after its last result."""
    return observed if previous is None else (1 - GAP_SMOOTHING) * previous + GAP_SMOOTHING * observed


def wait_cap(last_forward_s: float) -> float:
    """The longest a batch may be held back, after a forward that took ``last_forward_s``."""
    return min(MAX_WAIT_S, WAIT_FRACTION * last_forward_s)


def straggler_deadline(now: float, idle: Iterable[tuple[float, float]], last_forward_s: float) -> float | None:
    """``idle``: (time its last result was delivered, gap estimate) of each open session with nothing
    queued. Returns when the next batch should start at the latest, or None to start it now."""
    cap = wait_cap(last_forward_s)
    if cap <= 0:
        return None
    due = [done + gap for done, gap in idle if gap <= cap and now <= done + 2 * gap + cap]
    if not due:
        return None
    return min(now + cap, max(max(due), now))
