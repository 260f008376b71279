"""Exponential backoff with full jitter that never gives up."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays ``initial * factor**n`` capped at ``maximum``, each jittered.

    ``attempts`` counts consecutive failures; past ``down_after`` the dependency is
    reported down, but delays keep coming at the cap: the caller never stops trying.
    """

    initial: float = 1.0
    maximum: float = 30.0
    factor: float = 2.0
    down_after: int = 10
    jitter: float = 0.2
    attempts: int = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * (self.factor ** self.attempts))
        self.attempts += 1
        spread = base * self.jitter
        return max(0.0, base + random.uniform(-spread, spread))

    def reset(self) -> None:
        self.attempts = 0

    @property
    def down(self) -> bool:
        return self.attempts >= self.down_after
