"""Secret isolation for tools: the stores and `scrub` live in `tether.record.secrets`
(record scrubs what it writes, and lower layers may not import tools); this module
keeps the names tools and their callers already import."""

from tether.record.secrets import (
    EnvSecrets,
    FileSecrets,
    SecretError,
    SecretStore,
    scrub,
)

__all__ = ["EnvSecrets", "FileSecrets", "SecretError", "SecretStore", "scrub"]
