"""
Content-addressed blob store on disk: upload, download and cache states, and their cleanup.

:class:`BlobStore` is blocking and thread-safe (call it through
``deferToThread`` or a thread pool); :class:`StoreCleaner` applies
:class:`CleanupPolicy` (TTI, TTL, size watermark) to it.  See docs/store.md.
"""

from kraken.store.blobstore import (
    ACCESS_UPDATE_INTERVAL,
    BlobInfo,
    BlobReader,
    BlobStore,
    Ingest,
    SecondsClock,
    UploadInfo,
)
from kraken.store.cleanup import CleanupPolicy, CleanupResult, Removal, StoreCleaner
from kraken.store.errors import (
    BlobExists,
    BlobInUse,
    BlobNotFound,
    BlobPersisted,
    DownloadIncomplete,
    InvalidUploadID,
    MetaInfoConflict,
    PieceMissing,
    StoreError,
    UploadNotFound,
    naming_file,
)

__all__ = [
    "ACCESS_UPDATE_INTERVAL",
    "BlobExists",
    "BlobInUse",
    "BlobInfo",
    "BlobNotFound",
    "BlobPersisted",
    "BlobReader",
    "BlobStore",
    "CleanupPolicy",
    "CleanupResult",
    "DownloadIncomplete",
    "Ingest",
    "InvalidUploadID",
    "MetaInfoConflict",
    "PieceMissing",
    "Removal",
    "SecondsClock",
    "StoreCleaner",
    "StoreError",
    "UploadInfo",
    "UploadNotFound",
    "naming_file",
]
