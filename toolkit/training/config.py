"""A training run's options: their defaults and limits, their validation, and the command line that repeats a run.

Its own module because the options outlive the run: the checkpoint stores them (a resumed run restores them), the
CLI shows their defaults, and the model card names the command that trained its model, without importing training.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from toolkit.contract import parse
from toolkit.errors import ToolkitError

# with the cosine decay of toolkit.train: 99.56% test accuracy, mean of 3 seeds (docs/training.md#seeds)
DEFAULT_EPOCHS = 15
# upper bounds of the options: far beyond any real run, low enough for every backend's integer types
LIMITS = {
    "epochs": 10_000,
    "batch_size": 1_000_000,
    "limit": 1_000_000_000,
    "eval_limit": 1_000_000_000,
    "seed": 2**32 - 1,
    "devices": 4096,
}


@dataclass
class TrainConfig:
    """The options of one run, as `toolkit train` takes them; saved in the checkpoint and in metrics.json."""

    epochs: int | None = None  # None: DEFAULT_EPOCHS, or on resume the checkpoint's own number
    batch_size: int = 128
    learning_rate: float = 1e-3  # Adam's peak rate, then cosine-decayed
    warmup_epochs: float = 0.0  # linear warm-up from a tenth of the peak rate first (one-cycle; at most half the run)
    seed: int = 42
    limit: int | None = None  # train on the first N training images only
    eval_limit: int | None = None  # evaluate on the first N images of each split only (tests)
    augment: bool = True  # random shifts of up to 2 pixels; the architecture is unchanged
    mixed_precision: bool = False
    all_data: bool = False  # train on all 60,000 training images (no validation split) and keep the last epoch
    model_file: str | None = None  # a user's architecture (.keras), trained from its initial weights; None: reference
    devices: int | None = None  # data-parallel replicas; None: every visible accelerator (or simulated CPU device)
    input_contract: str | None = None  # --input-contract (toolkit.contract.parse); None: what the model shows

    def validate(self) -> None:
        """Refuse values out of range (or of the wrong type, from a damaged checkpoint) in one line each."""
        for name, top in LIMITS.items():
            value = getattr(self, name)
            if value is None and name in ("epochs", "limit", "eval_limit", "devices"):
                continue
            low = 0 if name == "seed" else 1
            if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= top):
                option = "--" + name.replace("_", "-")
                raise ToolkitError(f"{option} must be a whole number from {low} to {top:,}, got {value}")
        rate = self.learning_rate
        if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 < rate and np.isfinite(rate)):
            raise ToolkitError(f"--learning-rate must be a positive number, got {rate}")
        warmup = self.warmup_epochs
        if not (isinstance(warmup, (int, float)) and not isinstance(warmup, bool) and 0 <= warmup < 10_000):
            raise ToolkitError(f"--warmup-epochs must be a number from 0 to 10,000, got {warmup}")
        if self.model_file is not None and not isinstance(self.model_file, str):
            raise ToolkitError(f"model_file must be a path, got {self.model_file!r}")
        if self.input_contract is not None:
            parse(self.input_contract)  # one line naming the option where it is not a contract
        for name in ("augment", "mixed_precision", "all_data"):
            if not isinstance(getattr(self, name), bool):
                raise ToolkitError(f"{name} must be true or false, got {getattr(self, name)!r}")


def command_line(config: dict[str, Any]) -> str:
    """The `toolkit train` call that repeats a run recorded in metrics.json's `config`: every option that differs
    from its default, so that a model card names the training that made its model rather than a fixed text."""
    defaults = asdict(TrainConfig(epochs=DEFAULT_EPOCHS))
    words = ["toolkit train"]
    for name, value in config.items():
        if name not in defaults or name == "eval_limit" or value == defaults[name] or value is None:
            continue
        option = "--model" if name == "model_file" else "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(option if value else "--no-" + option[2:])
        else:
            words.append(f"{option} {shlex.quote(str(value))}")
    return " ".join(words)
