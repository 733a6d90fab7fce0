"""A full-screen terminal for the consoles of ``bwmon tail`` and ``bwmon top``: raw ANSI
escapes and termios, no curses.

``decode_keys`` turns the bytes a terminal sends into key names, without I/O; ``Terminal``
puts the terminal in cbreak mode on the alternate screen for the time of a ``with`` block
(Ctrl-C still raises SIGINT), reads keys and draws whole screens. Never leaves the terminal in
cbreak mode or without its cursor: the modes are restored on every exit of the block.
"""

from __future__ import annotations

import contextlib
import os
import signal
import termios
import tty
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Final, TextIO

import trio

# Escape sequences of the keys the consoles use (xterm, VT220 and tmux send these).
_SEQUENCES: Final = {
    "\x1b[A": "up",
    "\x1b[B": "down",
    "\x1b[C": "right",
    "\x1b[D": "left",
    "\x1bOA": "up",
    "\x1bOB": "down",
    "\x1bOC": "right",
    "\x1bOD": "left",
    "\x1b[5~": "pgup",
    "\x1b[6~": "pgdn",
    "\x1b[H": "home",
    "\x1b[F": "end",
    "\x1bOH": "home",
    "\x1bOF": "end",
    "\x1b[1~": "home",
    "\x1b[4~": "end",
    "\x1b[7~": "home",
    "\x1b[8~": "end",
    "\x1b[3~": "delete",
    "\x1b[Z": "backtab",
}
_SINGLE: Final = {
    "\r": "enter",
    "\n": "enter",
    "\t": "tab",
    "\x7f": "backspace",
    "\x08": "backspace",
}
ESC_WAIT_S: Final = 0.03  # a lone ESC is the Escape key unless more follows this soon
MAX_SEQUENCE: Final = 8


def decode_keys(text: str) -> tuple[list[str], str]:
    """The keys in ``text`` and what is left of it: the start of an escape sequence that may
    continue in the next read, or a lone ESC at the end (the Escape key if nothing follows
    soon: the reader decides)."""
    keys: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\x1b":
            keys.append(_SINGLE.get(char, char))
            i += 1
            continue
        rest = text[i:]
        match = next((s for s in _SEQUENCES if rest.startswith(s)), None)
        if match is not None:
            keys.append(_SEQUENCES[match])
            i += len(match)
            continue
        if len(rest) == 1 or (rest[1] in "[O" and _incomplete(rest)):
            return keys, rest
        if rest[1] in "[O":  # an unknown sequence: skip it whole
            end = i + 2
            while end < len(text) and not (text[end].isalpha() or text[end] == "~"):
                end += 1
            i = end + 1
            continue
        keys.append("esc")  # ESC then a key: Escape, then that key
        i += 1
    return keys, ""


def _incomplete(rest: str) -> bool:
    """An escape sequence not finished yet: no final letter or ``~`` so far."""
    if len(rest) > MAX_SEQUENCE:
        return False
    return not any(c.isalpha() or c == "~" for c in rest[2:])


class Terminal:
    """The controlling terminal of a console: input on ``fd_in``, frames written to ``out``."""

    def __init__(self, out: TextIO, fd_in: int = 0) -> None:
        self.out = out
        self.fd_in = fd_in
        self._saved: list[Any] | None = None

    def size(self) -> tuple[int, int]:
        """Columns and lines."""
        try:
            size = os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError):
            return 80, 24
        return size.columns, size.lines

    @contextlib.contextmanager
    def raw(self) -> Iterator[None]:
        """Cbreak mode (keys come one by one, not echoed; Ctrl-C still interrupts), the
        alternate screen and no cursor, restored on exit."""
        with contextlib.suppress(termios.error):
            self._saved = termios.tcgetattr(self.fd_in)
            tty.setcbreak(self.fd_in, termios.TCSANOW)
        self._write("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")
        try:
            yield
        finally:
            self._write("\x1b[0m\x1b[?25h\x1b[?1049l")
            if self._saved is not None:
                with contextlib.suppress(termios.error):
                    termios.tcsetattr(self.fd_in, termios.TCSADRAIN, self._saved)

    def draw(self, lines: Sequence[str]) -> None:
        """A whole screen: each line at its row, the rest of the row and of the screen
        cleared. Lines are no wider than the terminal (the caller fitted them)."""
        parts = [f"\x1b[{row};1H{line}\x1b[0m\x1b[K" for row, line in enumerate(lines, 1)]
        self._write("".join(parts) + "\x1b[J")

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.out.write(text)
            self.out.flush()

    async def read_keys(self) -> list[str] | None:
        """The keys typed next (``decode_keys``), at least one; None once the input closed.
        An ESC that nothing follows within ``ESC_WAIT_S`` is the Escape key."""
        keys: list[str] = []
        while not keys:
            await trio.lowlevel.wait_readable(self.fd_in)
            data = os.read(self.fd_in, 1024)
            if not data:
                return None
            keys, pending = decode_keys(data.decode("utf-8", "replace"))
            while pending:
                more = b""
                with trio.move_on_after(ESC_WAIT_S):
                    await trio.lowlevel.wait_readable(self.fd_in)
                    more = os.read(self.fd_in, 1024)
                if not more:  # nothing followed: Escape (a cut sequence is dropped)
                    keys.append("esc")
                    break
                decoded, pending = decode_keys(pending + more.decode("utf-8", "replace"))
                keys += decoded
        return keys


@contextlib.contextmanager
def resize_signals() -> Iterator[AsyncIterator[int]]:
    """SIGWINCH, as ``trio.open_signal_receiver`` delivers it."""
    with trio.open_signal_receiver(signal.SIGWINCH) as receiver:
        yield receiver
