"""Errors a user can cause. The CLI prints their message (no traceback) and exits 2."""


class CorralError(Exception):
    """Base class: the message says what went wrong, where, and how to fix it."""


class ModelNotFoundError(CorralError):
    """A model path or name that does not exist."""


class ModelFormatError(CorralError):
    """A model file that is truncated, corrupt, or of an architecture corral cannot run."""


class TokenizerError(CorralError):
    """No usable tokenizer, or a template that does not render."""


class InvalidArgumentError(CorralError):
    """A command-line or API argument with a bad value."""


class DataError(CorralError):
    """An input file with bad lines (each listed by number), or none usable."""
