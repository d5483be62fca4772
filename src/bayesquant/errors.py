"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message names the argument, the value and the fix."""


class DataError(UserError):
    """A data set is missing, corrupt or empty."""


class ModelError(UserError):
    """A model key is unknown or a model cannot be built or loaded."""
