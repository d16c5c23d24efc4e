"""Run noisy third-party code quietly, keeping what it said as lines of text.

``captured_output`` collects what a block prints (stdout and stderr), the Python
warnings it raises and the log records it emits, and lets none of it through;
``summarize_lines`` turns those lines into counts, one entry per distinct first line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence


@contextlib.contextmanager
def captured_output(logger_names: Sequence[str] = (), *, every_logger: bool = False) -> Iterator[list[str]]:
    """Capture stdout, stderr, Python warnings and log records into a list of lines.

    The list is yielded empty and filled when the block ends (also when it raises):
    log records first, as ``"log <level>: <message>"`` in the order they were emitted,
    then warnings as ``"<Category>: <message>"``, then the non-blank printed lines
    (stdout before stderr). Nothing is printed, no warning escapes the block, and no
    record logged to the root or a named logger reaches a handler.

    Args:
        logger_names: Loggers to capture besides the root logger. A logger's filter sees
            only the records logged to that very logger, not those its children pass up,
            so name every logger the code logs to (``"fvcore.nn.jit_analysis"``, not
            just ``"fvcore"``).
        every_logger: Also hold back records below ERROR of every logger, named or not
            (``logging.disable``), for code that logs through many loggers of its own
            (exporters, compilers); those records are dropped, not kept as lines.
    """
    lines: list[str] = []
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    loggers = [root, *(logging.getLogger(name) for name in logger_names)]

    def keep(record: logging.LogRecord) -> bool:
        lines.append(f"log {record.levelname.lower()}: {record.getMessage()}")
        return False  # dropped: never reaches a handler

    # logging.warning() on a handler-less root would install a stderr handler for good
    placeholder = logging.NullHandler()
    with contextlib.ExitStack() as stack:
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        if every_logger:
            previous = logging.root.manager.disable
            logging.disable(logging.WARNING)
            stack.callback(logging.disable, previous)
        root.addHandler(placeholder)
        stack.callback(root.removeHandler, placeholder)
        for logger in loggers:
            logger.addFilter(keep)
            stack.callback(logger.removeFilter, keep)
        try:
            yield lines
        finally:
            lines.extend(f"{w.category.__name__}: {w.message}" for w in caught)
            printed = (out.getvalue() + err.getvalue()).splitlines()
            lines.extend(line for line in printed if line.strip())


def summarize_lines(lines: Iterable[str]) -> dict[str, int]:
    """Distinct messages -> how many times each appeared, in first-appearance order.

    Each message is keyed by its first line, stripped and cut to 300 characters; blank
    ones are left out.
    """
    return dict(Counter(line.strip().splitlines()[0][:300] for line in lines if line.strip()))


__all__ = ["captured_output", "summarize_lines"]
