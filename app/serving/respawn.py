"""The master's policy for workers whose model fails to load: back off, then give up.

A worker whose model fails to load exits at once (it must not take traffic it can only
refuse) and leaves a note in the state directory (``app.serving.lifecycle.LoadFailureLog``).
When gunicorn reaps it, this policy counts consecutive failed loads per GPU slot:

- the slot's replacement waits ``first_backoff_s * 2**(failures - 1)`` (capped) before it
  starts, so a broken model or GPU does not spin at full speed, and the other workers keep
  serving meanwhile;
- once *every* worker slot has failed ``attempts`` times in a row, the master exits with
  ``EXIT_ALL_LOADS_FAILED`` so systemd, Docker or Kubernetes apply their restart policy
  (and their own backoff) and the failure is visible where operators look.

A worker that loaded its model, or died of anything else, resets its slot's count.
Runs in the gunicorn master: it must never import torch or prometheus_client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.serving.lifecycle import LoadFailureLog

# gunicorn's own code for "App failed to load"; operators may already alert on it.
EXIT_ALL_LOADS_FAILED = 4


@dataclass
class RespawnPolicy:
    workers: int
    attempts: int
    first_backoff_s: float
    max_backoff_s: float
    failures: dict[int, int] = field(default_factory=dict)
    last_reason: str = ""
    gave_up: bool = False

    def worker_exited(self, state_dir: Path | None, slot: int | None, pid: int) -> None:
        """Fold one reaped worker into the counts (called from gunicorn's child_exit)."""
        if slot is None:
            return
        note = LoadFailureLog(state_dir, slot).read()
        if note is not None and note.pid == pid:
            self.failures[slot] = self.failures.get(slot, 0) + 1
            self.last_reason = note.reason
        else:
            self.failures[slot] = 0

    def backoff_s(self, slot: int) -> float:
        """How long the next worker in ``slot`` waits before it starts loading."""
        failures = self.failures.get(slot, 0)
        if failures <= 0:
            return 0.0
        return float(min(self.max_backoff_s, self.first_backoff_s * 2 ** (failures - 1)))

    def has_serving_sibling(self, slot: int) -> bool:
        """Whether another slot's last worker did not fail its load (it serves or loads)."""
        return any(self.failures.get(other, 0) == 0
                   for other in range(self.workers) if other != slot)

    def give_up_reason(self) -> str | None:
        """Why the master should exit now, or None while any slot can still serve.

        Said once: the master reaps its other workers while it stops, and must not be
        told to halt again from inside its own halt.
        """
        exhausted = [slot for slot, count in self.failures.items() if count >= self.attempts]
        if self.gave_up or len(exhausted) < self.workers:
            return None
        self.gave_up = True
        return (
            f"every worker ({self.workers}) failed to load its model {self.attempts} times "
            f"in a row; last reason: {self.last_reason}. Exiting so the supervisor's restart "
            "policy applies."
        )
