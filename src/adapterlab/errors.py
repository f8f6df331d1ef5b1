"""Exceptions raised by adapterlab for users. Every message names the problem and the fix.

`UserError` is the one base class: the CLI prints its message on one line and exits 2. Each subclass also
derives from the builtin a Python caller would expect (ValueError, FileNotFoundError, ...), so
`except ValueError` keeps working for library users.
"""


class UserError(Exception):
    """A problem the user can fix (bad flag, bad file, wrong model); the message says what and how."""


class AdapterError(UserError, ValueError):
    """Bad input to the adapter engine (unknown method, bad option, target not found, ...)."""


class TargetNotFoundError(AdapterError):
    """A target names no module of the model."""


class NotMergeableError(AdapterError):
    """merge()/unmerge() asked of a method whose modules cannot be folded into the base weights."""


class IncompatibleAdapterError(AdapterError):
    """A saved adapter does not fit the model it is loaded into (other architecture or shapes)."""


class DataError(UserError, ValueError):
    """A data file that cannot be used; the message names the file, the record and the field."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (or is the wrong kind: a folder given as a file)."""


class UsageError(UserError, ValueError):
    """A flag or argument value that cannot work (negative limits, options that exclude each other, ...)."""


class RunFolderError(UserError, FileExistsError):
    """An output folder that cannot be used as asked (holds another run, is in use, is the model's folder)."""


class RunClashError(RunFolderError, AdapterError):
    """A run folder that the resume / overwrite policy refuses: it holds another run, this run without --resume or
    --overwrite, or nothing to resume. Also an AdapterError, as these refusals were before they had a class."""


class ModelError(UserError, ValueError):
    """A model that cannot be loaded: unknown spec, missing or corrupt files."""


class UnknownModelError(ModelError):
    """A model spec that names no local folder, no .gguf file, no known short name and no reachable hub model."""


class ModelPullError(UserError, RuntimeError):
    """A known model could not be fetched or extracted."""


class DataPullError(UserError, RuntimeError):
    """A published data set could not be fetched, or what came is not the file its recorded digest names."""


class CorruptFileError(UserError, ValueError):
    """A file adapterlab wrote or reads is truncated, empty or of another format; the message names it."""


class TrainingDivergedError(UserError, FloatingPointError):
    """Training reached a NaN or inf loss or gradient norm; the message names the step and the last good checkpoint."""
