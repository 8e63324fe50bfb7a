"""Download a file atomically with its published size and checksum verified; extract tar archives safely.

A download streams into a temporary file beside the target (stn.atomic.atomic_path) and is renamed into place only
once every byte arrived and the size and the checksums match; a broken connection, a short transfer, a checksum
mismatch or Ctrl-C leave no file behind, and the error names the URL, the file, what was expected and what came,
and what to do (retry, or place the file there yourself / use the offline source folder option).

Checksums are only ever the ones a named public source publishes (see the tables in svhn.py and cub.py); where
none is published a table pins the size alone and says so.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from stn.atomic import atomic_path, remove_stale_temporaries, temporary_name, write_error

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "stn-reproduction/1 (python urllib)"


class DownloadError(RuntimeError):
    """A download failed or its result does not match the published size/checksum; nothing was kept."""


class UnsafeArchiveError(RuntimeError):
    """An archive member would land outside the extraction folder, or is not a plain file or folder."""


@dataclass(frozen=True)
class Remote:
    """One published file: where it is, what it is called, and what it must be (size and/or checksums)."""

    urls: tuple[str, ...]  # tried in order
    filename: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    published_in: str = ""  # where the size/checksums come from (for the error messages and the stored attrs)

    def expected(self) -> dict[str, object]:
        return {key: value for key, value in (("size", self.size), ("sha256", self.sha256), ("md5", self.md5)) if value}


def file_digests(path: str | os.PathLike, md5: bool = True, sha256: bool = True) -> dict[str, object]:
    """Size, and the md5/sha256 hex digests of a file (read once, in chunks)."""
    hashers = {name: hashlib.new(name) for name, wanted in (("md5", md5), ("sha256", sha256)) if wanted}
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            size += len(chunk)
            for hasher in hashers.values():
                hasher.update(chunk)
    return {"size": size, **{name: hasher.hexdigest() for name, hasher in hashers.items()}}


def mismatches(got: dict[str, object], size: int | None, sha256: str | None, md5: str | None) -> list[str]:
    """'what: expected X, got Y' for every given expectation that `got` does not meet."""
    wanted = {"size": size, "sha256": sha256.lower() if sha256 else None, "md5": md5.lower() if md5 else None}
    return [
        f"{key}: expected {value}, got {got.get(key)}"
        for key, value in wanted.items()
        if value is not None and got.get(key) != value
    ]


def verify_file(path: str | os.PathLike, remote: Remote, hint: str = "", in_source: bool = False) -> None:
    """Raise DownloadError unless the file at `path` has the remote's published size and checksums. `in_source`: the
    file is in an offline source folder, which nothing downloads into (so the advice is to replace it)."""
    got = file_digests(path, md5=remote.md5 is not None, sha256=remote.sha256 is not None)
    wrong = mismatches(got, remote.size, remote.sha256, remote.md5)
    if wrong:
        advice = (
            "Replace it with the original file (an offline source folder is only read: nothing downloads into it), "
            "or unset the source folder option to download it."
            if in_source
            else f"Delete it and run again to download it (from {remote.urls[0]}), or replace it with the original."
        )
        raise DownloadError(
            f"{path} is not the published {remote.filename} ({'; '.join(wrong)}; published in {remote.published_in})."
            f" {advice}" + (f" {hint}" if hint else "")
        )


def download(
    remote: Remote, target: str | os.PathLike, *, timeout: float = 60.0, progress: bool = True, hint: str = ""
) -> Path:
    """Download `remote` to `target` (verified); an existing target is verified and kept. Mirrors are tried in order.

    `hint` is appended to every error (e.g. which offline source option to use instead).
    """
    target = Path(target)
    if target.exists():
        verify_file(target, remote, hint)
        return target
    if not remote.urls:
        raise DownloadError(f"no URL to download {remote.filename} from; place it at {target} yourself. {hint}")
    errors = []
    for url in remote.urls:
        try:
            _download_once(url, target, remote, timeout, progress)
            return target
        except DownloadError as error:
            errors.append(str(error))
            log.warning("%s", error)
    what = "\n  ".join(errors)
    raise DownloadError(
        f"could not download {remote.filename} to {target}:\n  {what}\nNothing partial was kept. Retry (the transfer "
        f"starts over), or download it yourself from {remote.urls[0]} and place it at {target} (it is verified: "
        f"{_expected_text(remote)}).{(' ' + hint) if hint else ''}"
    )


def _expected_text(remote: Remote) -> str:
    return ", ".join(f"{k} {v}" for k, v in remote.expected().items()) or "no published size or checksum"


def _download_once(url: str, target: Path, remote: Remote, timeout: float, progress: bool) -> None:
    """One attempt; raise DownloadError (and keep nothing) on any failure."""
    hashers = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
    received = 0
    where = f"{url} -> {target}"
    try:
        with atomic_path(target) as partial, open(partial, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                header = response.headers.get("Content-Length")
                announced = int(header) if header and header.isdigit() else None
                total = announced or remote.size
                with tqdm(total=total, unit="B", unit_scale=True, desc=remote.filename, disable=not progress) as bar:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        for hasher in hashers.values():
                            hasher.update(chunk)
                        bar.update(len(chunk))
            out.flush()
            if announced is not None and received != announced:
                raise DownloadError(
                    f"{where}: the transfer stopped early (size: expected {announced} bytes as announced by the "
                    f"server, got {received})"
                )
            got = {"size": received, **{name: hasher.hexdigest() for name, hasher in hashers.items()}}
            wrong = mismatches(got, remote.size, remote.sha256, remote.md5)
            if wrong:
                raise DownloadError(
                    f"{where}: the downloaded file is not the published {remote.filename} ({'; '.join(wrong)}; "
                    f"published in {remote.published_in or 'the code'})"
                )
    except DownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        raise DownloadError(f"{where}: {type(error).__name__}: {error} (after {received} bytes)") from error


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the extraction folder; refused")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} is not a plain file or folder (a link or a device); refused. "
            f"Is this the original archive?"
        )


def extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract a (gzipped) tar archive into `dest` safely and atomically per top-level entry; return those entries.

    Every member must be a plain file or folder with a relative path inside `dest` (checked before anything is
    written; Python's 'data' extraction filter is applied as well). The archive is extracted into a temporary
    folder inside `dest` and each top-level entry is then renamed into place, so an interrupted extraction never
    leaves a half-filled folder under its final name. An existing top-level entry is kept as it is.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)  # a killed extraction's folder (it can hold gigabytes)
    staging = dest / temporary_name(f"extract-{archive.name}")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            staging.mkdir()
            tar.extractall(staging, members=members, filter="data")
        entries = []
        for entry in sorted(staging.iterdir()):
            final = dest / entry.name
            if final.exists():
                log.warning("%s already exists; kept as it is (not replaced by the copy in %s)", final, archive)
            else:
                os.replace(entry, final)
            entries.append(final)
        return entries
    except (tarfile.TarError, EOFError) as error:
        raise DownloadError(
            f"could not extract {archive} into {dest}: {type(error).__name__}: {error}. The archive is probably "
            f"damaged: delete it and run again to download it afresh, or replace it with the original file."
        ) from error
    except OSError as error:  # the archive read fine: writing failed (full disk, permissions)
        raise write_error(dest, error) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def refuse_partial_folder(folder: Path, marker: str) -> None:
    """Raise DownloadError when `folder` exists without `marker`: a half-extracted (or foreign) folder, which
    extract_tar would keep as it is, so that the error never blames a good archive."""
    if folder.exists() and not (folder / marker).is_file():
        raise DownloadError(
            f"{folder} exists but lacks {marker}: a half-extracted or foreign folder (extraction keeps an existing "
            f"folder as it is). Delete {folder} and run again: it is extracted afresh from the verified archive."
        )


def fetch_and_extract(
    remote: Remote,
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    timeout: float = 60.0,
    progress: bool = True,
    hint: str = "",
) -> list[Path]:
    """download() `remote` to `archive` (or verify the one there) and extract_tar() it into `dest`."""
    path = download(remote, archive, timeout=timeout, progress=progress, hint=hint)
    log.info("extracting %s into %s", path, dest)
    return extract_tar(path, dest)


def urls_under(base: str | Sequence[str], filename: str) -> tuple[str, ...]:
    """base URL(s) + filename (a base ending in the filename is used as it is)."""
    bases = [base] if isinstance(base, str) else list(base)
    return tuple(b if b.rstrip("/").endswith(filename) else b.rstrip("/") + "/" + filename for b in bases)
