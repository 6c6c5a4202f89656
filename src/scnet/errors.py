"""Errors about values, worded for whoever made them.

A library caller passes ``batch_size=0`` and should read "batch_size must be a positive integer"; a user of the
command line typed ``--batch-size 0`` and should read the flag. So the library names a setting in a message as a
``{name}`` field of a ``SettingError`` and never as a flag; ``str(error)`` fills in the keyword, and the CLI words
the same error with flags (``error.worded(flag)``).
"""
from __future__ import annotations

from typing import Callable

__all__ = ["DataError", "SettingError", "Stopped", "flag", "keyword", "worded"]


def keyword(name: str) -> str:
    """A setting as a library caller names it: the keyword argument itself."""
    return name


def flag(name: str) -> str:
    """A setting as the command line names it: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def worded(template: str, settings: tuple[str, ...], name: Callable[[str], str]) -> str:
    """``template`` with each setting of ``settings``, marked ``{setting}``, named by ``name`` (``keyword`` or ``flag``);
    every other character as written (braces in a shown value are left alone)."""
    for setting in settings:
        template = template.replace("{" + setting + "}", name(setting))
    return template


class SettingError(ValueError):
    """A bad value of one or more named settings (or of none: then a plain ``ValueError`` message).

    ``template`` marks each setting named in ``settings`` as ``{name}``; every other character is the message
    as written (braces in a shown value are left alone).
    """

    def __init__(self, template: str, *settings: str) -> None:
        self.template, self.settings = template, settings
        super().__init__(self.worded(keyword))

    def worded(self, name: Callable[[str], str]) -> str:
        """The message with each setting named by ``name`` (``keyword`` or ``flag``)."""
        return worded(self.template, self.settings, name)

    def __reduce__(self):  # across processes (a study's workers) the settings stay settings
        return type(self), (self.template, *self.settings)


class Stopped(Exception):
    """A signal (SIGTERM, SIGINT) stopped long work at a safe point; the message says what was kept and how to go on
    (``{setting}`` marks a setting to name, as ``SettingError``'s do). The command line prints it in one line and
    exits with 128 + ``signum``, as a process ended by that signal."""

    def __init__(self, signum: int, template: str, *settings: str) -> None:
        self.signum, self.template, self.settings = signum, template, settings
        super().__init__(self.worded(keyword))

    def worded(self, name: Callable[[str], str]) -> str:
        return worded(self.template, self.settings, name)

    def __reduce__(self):  # across processes
        return type(self), (self.signum, self.template, *self.settings)


class DataError(SettingError):
    """A dataset or image cannot be read; the message says which file and how to get it. (Here, below ``data``, so
    that every module reading data raises it without importing another.)"""
