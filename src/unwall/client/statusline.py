"""The client's one status line on a terminal, redrawn in place; log lines pass above it.

Only when stdout is a terminal: to a pipe or a file the client writes its plain log lines
and nothing else. Log records written to the same terminal first wipe the line, then the
line is drawn again under them, so the two never mix.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from typing import TextIO

_WIPE = "\r\x1b[2K"


class StatusLine:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._text = ""
        self._wrapped: list[tuple[logging.Handler, Callable[[logging.LogRecord], None]]] = []

    @staticmethod
    def wanted(stream: TextIO) -> bool:
        """A status line on `stream`: a terminal, and not a dumb one."""
        try:
            return stream.isatty() and os.environ.get("TERM", "") != "dumb"
        except (AttributeError, ValueError):
            return False

    def show(self, text: str) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        if len(text) >= width:
            text = text[: max(1, width - 2)] + "…"
        self._text = text
        self._draw()

    def _draw(self) -> None:
        try:
            self.stream.write(_WIPE + self._text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _wipe(self) -> None:
        try:
            self.stream.write(_WIPE)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def around_logging(self) -> None:
        """Make the root logger's handlers wipe the line before a record and draw it after."""
        for handler in logging.getLogger().handlers:
            emit = handler.emit

            def wrapped(
                record: logging.LogRecord, emit: Callable[[logging.LogRecord], None] = emit
            ) -> None:
                self._wipe()
                emit(record)
                self._draw()

            self._wrapped.append((handler, emit))
            handler.emit = wrapped  # type: ignore[method-assign]

    def close(self) -> None:
        """Leave the last line where it is, end it, and give logging its handlers back."""
        for handler, emit in self._wrapped:
            handler.emit = emit  # type: ignore[method-assign,assignment]
        self._wrapped.clear()
        if self._text:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass


__all__ = ["StatusLine"]
