"""
Storage backends behind :class:`IBackend`, and namespace routing.

- :mod:`kraken.backends.interface`: the contract (names, namespaces, errors).
- :mod:`kraken.backends.names`: the grammar of names, namespaces and list prefixes.
- :mod:`kraken.backends.fs`, :mod:`kraken.backends.noop`: implementations.
- :mod:`kraken.backends.router`: namespace regex -> backend.
- :mod:`kraken.backends.streams`: producers/consumers to move bytes off the reactor thread.
- :mod:`kraken.backends.config`: config values and building backends from them.

Blocking calls run through the :class:`~kraken.io.runner.BlockingRunner` each backend is given.
"""

from kraken.backends.interface import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    BackendError,
    BlobInfo,
    BlobNotFound,
    IBackend,
    InvalidName,
    ListResult,
    NamespaceNotFound,
    OperationNotSupported,
    TransferStopped,
    UploadSource,
)

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "MAX_LIST_LIMIT",
    "BackendError",
    "BlobInfo",
    "BlobNotFound",
    "IBackend",
    "InvalidName",
    "ListResult",
    "NamespaceNotFound",
    "OperationNotSupported",
    "TransferStopped",
    "UploadSource",
]
