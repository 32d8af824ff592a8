"""Approximate-time matching of messages from several inputs (e.g. Image + CameraInfo).

The fallback for ``message_filters.ApproximateTimeSynchronizer`` where that package is
not installed. Pure Python: stamps are integer nanoseconds, messages are opaque, so it
is tested without ROS. Same parameters as message_filters (queue size per input, slop
in seconds); two deliberate choices:

- among the sets within the slop that contain the newest message, the one with the
  smallest spread of stamps wins (message_filters takes the first it finds);
- emitted sets have non-decreasing stamps on every input: when a set is emitted, the
  older messages still queued are discarded, and a message older than the last one
  emitted on its input is refused. Both count as dropped;
- a message more than ``JUMP_BACK_S`` older than the last one emitted on its input means
  time went back (a bag replayed in a loop, a clock reset, or one stamp from the far
  future before): the synchroniser forgets what it emitted and the messages queued from
  that far ahead, instead of refusing everything after. Emitting a set discards only the
  older messages within ``JUMP_BACK_S`` of it, so one far-future set does not take the
  present's messages with it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["JUMP_BACK_S", "ApproximateTimeSynchronizer"]

JUMP_BACK_S = 1.0  # far beyond any camera's jitter, shorter than a bag loop


class ApproximateTimeSynchronizer:
    """Return matched tuples (one message per input) whose stamps lie within ``slop`` seconds.

    ``add(index, stamp_ns, msg)`` feeds one message of input ``index``; when it completes
    a set, the set (in input order) is passed to every registered callback and returned.
    Thread-safe: inputs may arrive from different executor threads.
    """

    def __init__(self, num_inputs: int, queue_size: int, slop: float,
                 callback: Callable[..., Any] | None = None):
        if int(num_inputs) < 2:
            raise ValueError(f"num_inputs: need at least 2 inputs to synchronise, got {num_inputs}")
        if int(queue_size) < 1:
            raise ValueError(f"queue_size: must be at least 1, got {queue_size}")
        if not slop >= 0.0:
            raise ValueError(f"slop: must be a non-negative number of seconds, got {slop}")
        self.queue_size = int(queue_size)
        self.slop_ns = round(slop * 1e9)
        self._queues: list[dict[int, Any]] = [{} for _ in range(int(num_inputs))]
        self._last_emitted: list[int | None] = [None] * int(num_inputs)
        self._callbacks: list[Callable[..., Any]] = [callback] if callback is not None else []
        self._lock = threading.Lock()
        self.dropped = [0] * int(num_inputs)
        self.resets = 0  # times time went back (JUMP_BACK_S)

    def register_callback(self, callback: Callable[..., Any]) -> None:
        """Call ``callback(*msgs)`` for every matched set."""
        self._callbacks.append(callback)

    def add(self, index: int, stamp_ns: int, msg: Any) -> tuple | None:
        """Return the matched set completed by ``msg`` (input ``index``, stamp in ns), or None."""
        if not 0 <= index < len(self._queues):
            raise ValueError(f"index: expected an input in [0, {len(self._queues) - 1}], got {index}")
        with self._lock:
            matched = self._add_locked(index, int(stamp_ns), msg)
            # Called under the lock so sets reach callbacks in stamp order; keep callbacks short.
            if matched is not None:
                for callback in self._callbacks:
                    callback(*matched)
        return matched

    def _add_locked(self, index: int, stamp: int, msg: Any) -> tuple | None:
        last = self._last_emitted[index]
        jump = round(JUMP_BACK_S * 1e9)
        if last is not None and last - stamp > jump:
            for i, queue in enumerate(self._queues):
                ahead = [t for t in queue if t - stamp > jump]
                for t in ahead:
                    del queue[t]
                self.dropped[i] += len(ahead)
            self._last_emitted = [None] * len(self._queues)
            self.resets += 1
            last = None
        if last is not None and stamp <= last:
            self.dropped[index] += 1  # older than what was already emitted: never useful
            return None
        queue = self._queues[index]
        if stamp in queue:
            self.dropped[index] += 1  # a repeated stamp replaces the queued message
        queue[stamp] = msg
        while len(queue) > self.queue_size:
            del queue[min(queue)]
            self.dropped[index] += 1

        candidates = []
        for i, other in enumerate(self._queues):
            if i == index:
                candidates.append((stamp,))
                continue
            near = tuple(s for s in other if abs(s - stamp) <= self.slop_ns)
            if not near:
                return None
            candidates.append(near)
        best = min(itertools.product(*candidates), key=lambda stamps: max(stamps) - min(stamps))
        if max(best) - min(best) > self.slop_ns:
            return None

        matched = tuple(q.pop(s) for q, s in zip(self._queues, best))
        for i, (q, s) in enumerate(zip(self._queues, best)):
            older = [t for t in q if s - round(JUMP_BACK_S * 1e9) <= t < s]
            for t in older:
                del q[t]
            self.dropped[i] += len(older)
            self._last_emitted[i] = s
        return matched

    def pending(self) -> list[int]:
        """Return the number of messages waiting in each input's queue."""
        with self._lock:
            return [len(q) for q in self._queues]
