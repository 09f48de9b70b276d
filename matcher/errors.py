"""Exceptions that carry a message naming the file and the problem."""


class WhaleMatchError(Exception):
    """Base class: every error the engine raises on purpose."""


class DataError(WhaleMatchError):
    """A scenario, query, database or metadata file is missing or malformed."""


class ImageError(WhaleMatchError):
    """One image file cannot be used (missing, unreadable, unsupported, too small)."""


class WeightsError(WhaleMatchError):
    """Pretrained weights are absent or do not match their recorded checksum."""


class DeviceError(WhaleMatchError):
    """The requested compute device does not exist on this machine."""


class ConfigError(WhaleMatchError):
    """An option or environment variable holds a value that cannot be used."""


class BackendError(WhaleMatchError):
    """The execution backend cannot run: Ray not installed, a cluster unreachable, without CPUs or with other
    software than this process."""
