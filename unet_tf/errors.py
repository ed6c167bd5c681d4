"""The errors that are the user's to fix, apart from Python's own ``ValueError`` and the OS's
file errors. The CLI answers each of :data:`USER_ERRORS` with exit 2 and its one-line message;
anything else is an internal failure (exit 1, "internal error"), never the user's mistake."""


class InvalidType(TypeError):
    """A value the user gave has the wrong type (an image's dtype, a setting's type)."""


class MissingExtra(ModuleNotFoundError):
    """An optional dependency is not installed; the message gives the pip command."""


USER_ERRORS = (ValueError, InvalidType, MissingExtra, FileNotFoundError, FileExistsError,
               NotADirectoryError, IsADirectoryError, PermissionError)
