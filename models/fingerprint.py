"""A checkpoint directory's fingerprint: changes whenever its files do, costs a few stats to compute.

A model's version names its checkpoint (``<directory>[@<step>]+<fingerprint>``), and score-cache
keys carry the version, so two checkpoints must never share one: two directories with the same
name, or a checkpoint replaced in place, would otherwise serve each other's scores from a shared
Redis. The fingerprint is a sha256 over every file under the directory (symbolic links followed,
as a Hugging Face cache's snapshots are; hidden files and folders, such as a download tool's
``.cache``, left out): its relative path and size, and its content when it is
at most ``CONTENT_BYTES`` (configurations, tokenizers, LoRA adapters, small heads) or else its
modification time. Hashing gigabytes of weights would cost the gateway seconds to minutes at
start-up for a spec it reads without loading weights (models/registry.py ``load_spec``); a rewritten
weight file gets a new modification time. Copies of one checkpoint with different modification
times (each replica downloading its own) therefore get different fingerprints: they do not share
cache entries, which costs recomputation, never a wrong score. Mount one volume, or copy
preserving times (``cp -p``, ``rsync -a``), to share.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CONTENT_BYTES = 16 << 20


def fingerprint(directory: Path, length: int = 12) -> str:
    """Hex digits of the directory's fingerprint (the first ``length``)."""
    digest = hashlib.sha256()
    root = Path(directory)
    files = (
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0".encode())
        if stat.st_size <= CONTENT_BYTES:
            digest.update(path.read_bytes())  # an unreadable file fails the load, naming it
        else:
            digest.update(str(stat.st_mtime_ns).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:length]


def version(directory: Path, *parts: str) -> str:
    """``<directory name>[@part...]+<fingerprint>``: a checkpoint model's version."""
    return "@".join((Path(directory).name, *parts)) + "+" + fingerprint(directory)
