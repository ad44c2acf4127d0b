"""Early stopping on a validation bound, with its state stored in every checkpoint."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass
class EarlyStopping:
    """Early stopping on a validation bound (higher is better), as in the VampPrior code.

    Every validation result ``update``s it: a better value becomes the best (its parameters are
    saved by the trainer in ``<workdir>/best/``) and resets the count of evaluations without
    improvement; otherwise the count grows, except before ``min_epochs`` (e.g. during a KL
    warm-up, when the bound being trained is not yet the ELBO).  Once the count reaches
    ``patience`` the run is ``stopped``.  The state is stored in every checkpoint, so a resumed
    run stops where an uninterrupted one would.
    """

    patience: int
    min_epochs: int = 0
    best_value: float = -math.inf
    best_epoch: int = 0
    bad_evaluations: int = 0
    stopped: bool = False

    def update(self, epoch: int, value: float) -> bool:
        """Records the validation value after ``epoch``; returns whether it is the best so far."""
        if math.isfinite(value) and value > self.best_value:
            self.best_value, self.best_epoch, self.bad_evaluations = float(value), int(epoch), 0
            return True
        if epoch > self.min_epochs:
            self.bad_evaluations += 1
        self.stopped = self.bad_evaluations >= self.patience
        return False

    def metrics(self) -> dict[str, Any]:
        return {"early_stopping/best": self.best_value, "early_stopping/best_epoch": self.best_epoch,
                "early_stopping/bad_evaluations": self.bad_evaluations, "early_stopping/stopped": self.stopped}

    def to_json(self) -> dict[str, Any] | None:
        if not self.patience:
            return None
        return {"best_value": self.best_value if math.isfinite(self.best_value) else None,
                "best_epoch": self.best_epoch, "bad_evaluations": self.bad_evaluations, "stopped": self.stopped}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, *, patience: int, min_epochs: int) -> "EarlyStopping":
        out = cls(patience=patience, min_epochs=min_epochs)
        if data and patience:
            best = data.get("best_value")
            out.best_value = -math.inf if best is None else float(best)
            out.best_epoch = int(data.get("best_epoch", 0))
            out.bad_evaluations = int(data.get("bad_evaluations", 0))
            out.stopped = bool(data.get("stopped", False))
        return out
