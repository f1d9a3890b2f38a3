"""Project-wide exception types. Each message says what went wrong and what to do."""


class AdrecStreamError(Exception):
    """Base class for errors that the CLI reports as one clear line (exit code 2)."""


class ConfigError(AdrecStreamError):
    """A YAML config is missing, malformed, or has unknown / ill-typed keys."""


class DataFileError(AdrecStreamError):
    """A data file is missing, unreadable, or not in the expected format."""


class UnsafePickleError(DataFileError):
    """A pickle asked for a type outside the allowed set (dict/list/int/str/...)."""


class CheckpointError(AdrecStreamError):
    """A checkpoint is missing, truncated, corrupted, or incompatible."""


class StoreLockedError(AdrecStreamError):
    """A RocksDB store path is held by another process."""


class StalePlanError(AdrecStreamError):
    """A sequence-store plan was applied after another write to that store (or to another store); nothing was
    written."""


class BrokerError(AdrecStreamError):
    """The embedded broker could not be started, reached, or stopped, or a topic could not be created."""


class StoreError(AdrecStreamError):
    """A RocksDB state store cannot be opened (corrupt, unreadable, wrong format) or a write failed."""


class TrainingDivergedError(AdrecStreamError):
    """The training loss became NaN or infinite (learning rate or initialisation scale too large)."""


class RestoreTimeoutError(StoreError):
    """A partition's sequence store was not restored from its changelog within ``state.restore_timeout_s``."""


class PartitionCountChangedError(AdrecStreamError):
    """The clicks topic's partition count differs from the one the stored state was built with."""
