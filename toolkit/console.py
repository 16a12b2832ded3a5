"""What the CLI shows: rich tables, progress bars and the Keras callback that feeds one. The library never prints."""

from __future__ import annotations

import re
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.console import Group
from rich.table import Table
from rich.text import Text

def _console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    # in a pipe or a CI log there is no terminal width: use one wide enough for the result tables
    return Console(stderr=stderr, highlight=False, width=None if probe.is_terminal else 160)


console = _console()
err_console = _console(stderr=True)


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=not err_console.is_terminal,
    )


_NUMBER = re.compile(r"^[+-]?[\d,]*\.?\d+(e[+-]?\d+)?%?$")


def table(title: str | None, columns: list[str], rows: list[list], styles: list[str | None] | None = None):
    t = Table(header_style="bold")
    for i, col in enumerate(columns):
        values = [str(row[i]) for row in rows]
        numeric = i > 0 and all(_NUMBER.match(v) or v == "-" for v in values)
        t.add_column(col, justify="right" if numeric else "left")
    for i, row in enumerate(rows):
        t.add_row(*[str(c) for c in row], style=(styles[i] if styles else None))
    return Group(Text(title, style="bold"), t) if title else t


def keras_progress_callback():
    """A Keras callback: one progress bar per epoch, then a one-line summary of that epoch."""
    from toolkit.backend import keras as _keras

    keras = _keras()

    class RichEpochProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self._total = self.params.get("epochs", 0)

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()
            self._progress = progress_bar(transient=True)
            self._progress.start()
            steps = self.params.get("steps") or 0
            self._task = self._progress.add_task(f"epoch {epoch + 1}/{self._total}", total=steps, status="")

        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            status = f"loss {logs.get('loss', float('nan')):.4f}  acc {logs.get('accuracy', float('nan')):.4f}"
            self._progress.update(self._task, completed=batch + 1, status=status)

        def on_epoch_end(self, epoch, logs=None):
            self._progress.stop()
            logs = logs or {}
            err_console.print(
                f"epoch {epoch + 1:>3}/{self._total}  loss {logs.get('loss', 0):.4f}  acc {logs.get('accuracy', 0):.4f}"
                f"  val_loss {logs.get('val_loss', 0):.4f}  val_acc {logs.get('val_accuracy', 0):.4f}"
                f"  {time.perf_counter() - self._t0:.1f} s"
            )
            sys.stderr.flush()

    return RichEpochProgress()
