"""
Kraken for Twisted: peer-to-peer distribution of Docker/OCI images and blobs.

See docs/architecture.md for the rooms of this package.
"""

__version__ = "0.1.0.dev0"
