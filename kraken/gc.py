"""
Garbage collection of the blobs no manifest references: ``kraken gc``.

Deleting a tag or a manifest through the proxy removes only tags: blobs are shared by every
repository (cross-repository mounts, the same layer in many images), so their bytes may go
only once nothing references them.  :class:`GarbageCollector` proves that on the backend,
which holds every tag and blob durably:

1. **mark**: every tag of every backend is a root; a root's digest is read as a manifest
   (Docker schema 2, manifest list, OCI manifest and index) and its config, layers and child
   manifests are marked, child manifests recursively.  Referrers (signatures, SBOMs) are
   kept by the ``sha256-<hex>`` tags of their subjects' referrers indexes, which the proxy
   maintains.  A root that is not a manifest (a plain blob tagged directly) is marked alone.
   A tag or manifest that cannot be read stops the whole run: nothing is proved then.
2. **grace**: an unreferenced blob is first recorded with the time it was seen unreferenced
   (:class:`GCState`, a small JSON file the command keeps); it is removed only once it has
   stayed unreferenced for ``grace`` seconds (default a day).  A push in flight uploads its
   blobs before its manifest and tag, so its blobs are young candidates, never removed.
3. **mark again** just before removing: a candidate that a push made since the first mark
   references is kept.
4. **sweep**: the blob is deleted from each backend that listed it.  Origins keep a cached
   copy until their own cleanup (TTI/TTL) evicts it, as agents do; a download already
   running finishes.

With ``dry_run`` nothing is deleted and the state is left as it was: the decisions say what
a real run would do now, each with its reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, ClassVar, Final, Literal

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken.api.agent import MAX_MANIFEST_SIZE
from kraken.api.distribution import manifest_references
from kraken.backends import IBackend, OperationNotSupported
from kraken.backends.names import BlobName, TagName, parse_name
from kraken.backends.router import BackendRouter
from kraken.backends.streams import download_bytes
from kraken.buildindex.tags import MAX_TAG_OBJECT
from kraken.core import Digest, InvalidDigest
from kraken.http.errors import APIError
from kraken.io.reactor import IDaemonReactor

__all__ = [
    "DEFAULT_GRACE",
    "Decision",
    "GCAborted",
    "GCState",
    "GarbageCollector",
    "add_gc_parser",
]

#: Seconds a blob must stay unreferenced before it is removed.
DEFAULT_GRACE: Final = 24 * 3600.0
#: The namespace the collector names in backend calls (blob names do not depend on it).
GC_NAMESPACE: Final = "kraken-gc"
_PAGE: Final = 1000


class GCAborted(Exception):
    """Something the proof needs could not be read: nothing was removed."""


@frozen
class Decision:
    """What the collector does with one unreferenced blob, and why."""

    digest: Digest
    action: Literal["remove", "keep"]
    reason: str

    def __str__(self) -> str:
        return f"{self.action} {self.digest}: {self.reason}"


@define
class GCState:
    """When each unreferenced blob (by hex) was first seen unreferenced (epoch seconds)."""

    unreferenced_since: dict[str, float] = field(factory=dict)

    @classmethod
    def load(cls, path: str) -> GCState:
        """The state saved at ``path`` (empty if there is none yet); blocking."""
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return cls()
        since = raw.get("unreferenced_since") if isinstance(raw, dict) else None
        if not isinstance(since, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) for k, v in since.items()
        ):
            raise GCAborted(f"{path}: not a kraken gc state file")
        return cls({k: float(v) for k, v in since.items()})

    def save(self, path: str) -> None:
        """Write the state to ``path`` atomically; blocking."""
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"unreferenced_since": self.unreferenced_since}, f, sort_keys=True)
        os.replace(tmp, path)


@define
class _Marks:
    referenced: set[str]
    #: Blob hex -> the backends that list it.
    blobs: dict[str, list[IBackend]]
    roots: int


@define
class GarbageCollector:
    """Mark from the tags, sweep what stayed unreferenced past ``grace`` (module docstring)."""

    log: ClassVar[Logger] = Logger()

    backends: BackendRouter
    clock: IReactorTime
    grace: float = DEFAULT_GRACE

    async def _names(self, backend: IBackend) -> list[str]:
        """Every name in ``backend`` (none for a read-only one: Kraken wrote nothing there)."""
        names: list[str] = []
        token: str | None = None
        while True:
            try:
                page = await backend.list("", _PAGE, token)
            except OperationNotSupported:
                return []
            names.extend(page.names)
            token = page.continuation_token
            if token is None:
                return names

    async def _read(self, namespace: str, name: str, limit: int, what: str) -> bytes:
        try:
            return await download_bytes(
                self.backends.backend_for(namespace), namespace, name, limit
            )
        except Exception as e:
            raise GCAborted(f"cannot read {what}: {e}") from e

    async def _mark(self) -> _Marks:
        blobs: dict[str, list[IBackend]] = {}
        tags: list[TagName] = []
        for backend in self.backends.backends():
            if backend is self.backends.noop:
                continue
            for name in await self._names(backend):
                parsed = parse_name(name)
                if isinstance(parsed, BlobName):
                    blobs.setdefault(parsed.hex, []).append(backend)
                else:
                    tags.append(parsed)
        referenced: set[str] = set()
        for tag in tags:
            raw = await self._read(tag.repo, str(tag), MAX_TAG_OBJECT, f"tag {tag}")
            try:
                root = Digest.parse(raw.decode("ascii", "replace").strip())
            except InvalidDigest as e:
                raise GCAborted(f"tag {tag} holds no digest: {e}") from None
            await self._mark_manifest(tag.repo, root, referenced, f"tag {tag}")
        return _Marks(referenced, blobs, len(tags))

    async def _mark_manifest(self, repo: str, root: Digest, referenced: set[str], via: str) -> None:
        todo = [root]
        while todo:
            digest = todo.pop()
            if digest.hex in referenced:
                continue
            referenced.add(digest.hex)
            data = await self._read(repo, digest.hex, MAX_MANIFEST_SIZE, f"{digest} ({via})")
            try:
                references = manifest_references(data)
            except APIError:
                continue  # a plain blob, tagged directly: it has no children
            referenced.update(d.hex for d in references.blobs)
            todo.extend(references.manifests)

    async def collect(self, state: GCState, *, dry_run: bool = False) -> list[Decision]:
        """
        Decide on every unreferenced blob and (unless ``dry_run``) remove those past grace.

        ``state`` is updated in place (unless ``dry_run``): new candidates are recorded,
        referenced and vanished blobs dropped.  Fails with :class:`GCAborted`, having removed
        nothing, when a tag or a manifest cannot be read.
        """
        marks = await self._mark()
        now = self.clock.seconds()
        since = dict(state.unreferenced_since)
        decisions: list[Decision] = []
        for hex_ in sorted(set(marks.blobs) - marks.referenced):
            first = since.setdefault(hex_, now)
            digest = Digest(hex_)
            if now - first >= self.grace:
                reason = f"unreferenced since {_when(first)}, grace of {self.grace:g}s over"
                decisions.append(Decision(digest, "remove", reason))
            else:
                reason = (
                    f"unreferenced since {_when(first)}, in grace until {_when(first + self.grace)}"
                )
                decisions.append(Decision(digest, "keep", reason))
        since = {k: v for k, v in since.items() if k in marks.blobs and k not in marks.referenced}
        self.log.info(
            "gc: {roots} tags, {referenced} referenced objects, {candidates} unreferenced blobs",
            roots=marks.roots,
            referenced=len(marks.referenced),
            candidates=len(decisions),
        )
        if dry_run:
            return decisions
        if any(d.action == "remove" for d in decisions):
            again = await self._mark()
            decisions = [
                Decision(d.digest, "keep", "referenced again during this run")
                if d.action == "remove" and d.digest.hex in again.referenced
                else d
                for d in decisions
            ]
        for decision in decisions:
            if decision.action != "remove":
                continue
            for backend in marks.blobs[decision.digest.hex]:
                await backend.delete(GC_NAMESPACE, decision.digest.hex)
            since.pop(decision.digest.hex, None)
            self.log.info("gc: removed {digest}", digest=decision.digest)
        state.unreferenced_since = since
        return decisions


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# -- the command ----------------------------------------------------------------------------


def _gc(args: argparse.Namespace) -> int:
    from twisted.internet.task import react

    from kraken.backends.config import BackendContext, BackendsConfig
    from kraken.config import ConfigError, load_config
    from kraken.io.runner import threadpool_runner

    try:
        config = load_config("origin", args.config)
    except ConfigError as e:
        print(f"kraken gc: {e}", file=sys.stderr)
        return 2
    state_path = args.state or os.path.join(str(config.data_dir), "gc-state.json")
    try:
        state = GCState.load(state_path)
    except (GCAborted, OSError, ValueError) as e:
        print(f"kraken gc: {e}", file=sys.stderr)
        return 2
    code = 0

    # react() calls it with the global reactor, which provides every interface it names.
    def main(reactor: IDaemonReactor) -> Deferred[None]:
        async def run() -> None:
            nonlocal code
            from twisted.python.threadpool import ThreadPool

            pool = ThreadPool(1, 4, "kraken-gc")
            pool.start()
            try:
                routes = [e.to_raw() for e in config.backends]
                backends = BackendsConfig.from_list(routes).build(
                    BackendContext(reactor, threadpool_runner(reactor, pool))
                )
                collector = GarbageCollector(backends, reactor, args.grace)
                try:
                    decisions = await collector.collect(state, dry_run=args.dry_run)
                except GCAborted as e:
                    print(f"kraken gc: nothing removed: {e}", file=sys.stderr)
                    code = 1
                    return
                verb = "would remove" if args.dry_run else "removed"
                for d in decisions:
                    action = verb if d.action == "remove" else "keep"
                    print(f"{action} {d.digest}: {d.reason}")
                removed = sum(d.action == "remove" for d in decisions)
                print(f"{len(decisions)} unreferenced blobs: {removed} {verb}")
            finally:
                pool.stop()

        return Deferred.fromCoroutine(run())

    try:
        react(main, [])
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    if code == 0 and not args.dry_run:
        state.save(state_path)
    return code


def add_gc_parser(sub: Any) -> None:
    """Add ``kraken gc`` to the CLI's subcommands."""
    gc = sub.add_parser(
        "gc",
        help="remove blobs no manifest references from the backend, after a grace period",
        description=__doc__.strip().splitlines()[0] if __doc__ else None,
    )
    gc.add_argument("--config", metavar="FILE", help="the origin's config (its backends)")
    gc.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be removed and why; remove nothing, record nothing",
    )
    gc.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"how long a blob stays unreferenced before removal (default {DEFAULT_GRACE:g})",
    )
    gc.add_argument(
        "--state",
        metavar="FILE",
        help="where unreferenced blobs are remembered (default <data_dir>/gc-state.json)",
    )
    gc.set_defaults(func=_gc)
