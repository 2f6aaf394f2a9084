"""Errors a user can act on: each names what was wrong, where, and what would be valid."""

from __future__ import annotations


class VantageError(Exception):
    """Base class: the message is meant for the person who ran the command."""


class PluginError(VantageError):
    """A plugin could not be loaded, was registered twice, or is unknown."""


class ConfigError(VantageError):
    """A config file or override is invalid; the message starts with ``file:line: field``."""


class DataError(VantageError):
    """A dataset file, row, schema or database is malformed or missing."""


class Cancelled(VantageError):
    """A request's work was stopped (its caller gave up, e.g. a server time-out)."""
