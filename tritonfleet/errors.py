"""Errors a user can act on: each says where the problem is and what to do about it."""

from __future__ import annotations


class TritonfleetError(Exception):
    """A problem reported to the user without a traceback.

    `file` and `line` point at the input that is wrong (inventory, playbook, config.pbtxt);
    `hint` says what to do.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.hint = hint

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        text = f"{where}{self.message}"
        if self.hint:
            text += f"\n  fix: {self.hint}"
        return text


class InventoryError(TritonfleetError):
    """The inventory is malformed or names something that does not exist."""


class PlaybookError(TritonfleetError):
    """A playbook is malformed: unknown module, missing argument, bad Jinja2."""
