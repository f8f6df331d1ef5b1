"""`adapterlab data pull`: fetch catalog files over HTTP(S), check each against its recorded digest, write atomically.

The base URL is the pinned commit on raw.githubusercontent.com; $ADAPTERLAB_DATA_URL (or `base_url=`) replaces it
with a mirror laid out as the repository is. Nothing but a verified file ever lands in the data root.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import DataPullError, UsageError
from ..files import write_atomic
from .catalog import BASE_URL, CATALOG, RemoteFile
from .locations import cache_root

URL_ENV = "ADAPTERLAB_DATA_URL"
TIMEOUT_S = 60.0  # per socket operation, not for the whole file
NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def base_url(override: str | None = None) -> str:
    """Where the files are fetched from: `override`, else $ADAPTERLAB_DATA_URL, else the pinned commit."""
    return (override or os.environ.get(URL_ENV) or BASE_URL).rstrip("/")


def names_for(spec: str) -> list[str]:
    """The catalog names `spec` asks for: one name, or every name for `all`."""
    if spec == "all":
        return list(CATALOG)
    if spec not in CATALOG:
        raise UsageError(f"No data set {spec!r} to pull; choose one of {', '.join(CATALOG)}, or all.")
    return [spec]


def file_digest(path: Path, kind: str) -> str:
    """The digest of `path` of `kind` ("sha256", or "git-sha1": git's blob id of the bytes)."""
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{kind}:{digest.hexdigest()}"


def matches(path: Path, remote: RemoteFile) -> bool:
    """Whether `path` is a file holding exactly the bytes `remote` pins."""
    return path.is_file() and file_digest(path, remote.digest.partition(":")[0]) == remote.digest


def download(remote: RemoteFile, root: Path, base: str | None = None) -> Path:
    """Fetch `remote` into `root`/`remote.dest`, verified; on any failure nothing is left behind (no file, no folder
    this call created) and a one-line DataPullError names the URL and where to put the file by hand."""
    url = f"{base_url(base)}/{remote.source}"
    target = root / remote.dest
    by_hand = f"download it by hand and save it as {target}"

    def fetch(tmp: str) -> None:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except NETWORK_ERRORS as exc:  # a full disk (another OSError) is left to write_atomic to name
            reason = (f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError)
                      else getattr(exc, "reason", None) or exc)
            raise DataPullError(f"Could not download {url} ({reason}); when online run `adapterlab data pull` "
                                f"again, or {by_hand}.") from exc
        got = file_digest(Path(tmp), remote.digest.partition(":")[0])
        if got != remote.digest:
            raise DataPullError(f"{url} has {got}, not the recorded {remote.digest}; refused, nothing saved. Check "
                                f"${URL_ENV} (a mirror must serve the pinned files), or {by_hand} from the commit.")

    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        write_atomic(target, fetch)
    except BaseException:
        for folder in created:  # deepest first; only the empty folders this call made
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return target


def pull(spec: str, root: Path | None = None, *, base: str | None = None,
         log: Callable[[str], None] = print) -> list[Path]:
    """Fetch the files of catalog name `spec` (or `all`) into `root` (default: the cache), skipping those already
    there with the right digest; returns their paths."""
    root = Path(root) if root is not None else cache_root()
    paths = []
    for name in names_for(spec):
        for remote in CATALOG[name]:
            target = root / remote.dest
            if matches(target, remote):
                log(f"{name}: {target} is already there (digest checked)")
            else:
                download(remote, root, base)
                log(f"{name}: {target} ({target.stat().st_size / 2**20:.1f} MiB, {remote.digest.partition(':')[0]} "
                    "checked)")
            paths.append(target)
    return paths
