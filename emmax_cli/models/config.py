"""What an emmax model directory says about itself (``emmax.json``), where models are cached,
and file checksums. The bottom of the ``models`` package: it imports nothing else from it."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

MODEL_FORMAT = 1
CONFIG_FILE = "emmax.json"
ENCODER_DIR = "encoder"


@dataclass
class ModelConfig:
    """The contents of ``emmax.json``: how to turn encoder outputs into sentence vectors."""

    name: str
    pooling: str = "mean"  # mean | cls
    normalize: bool = True
    prefix: str = ""  # prepended to every input text (e.g. "query: " for E5-style models)
    max_length: int = 512
    dim: int = 0
    base_model: str | None = None
    mine_threshold: float | None = None
    mine_threshold_source: str | None = None
    num_ranks: int | None = None
    checksum: str = ""  # sha256 of the encoder weights
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    format_version: int = MODEL_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: Path) -> ModelConfig:
        """Read ``emmax.json``; unknown keys are kept in ``extra``.

        Args:
            path: the ``emmax.json`` file.

        Returns:
            The config.

        Raises:
            ModelLoadError: the file is missing or not valid JSON.
        """
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(
                f"{path}: unreadable model metadata ({e})",
                hint="rebuild or re-copy the model directory",
            ) from None
        known = set(cls.__dataclass_fields__)
        extra = {k: v for k, v in d.items() if k not in known}
        d = {k: v for k, v in d.items() if k in known}
        d.setdefault("extra", {}).update(extra)
        return cls(**d)

    def to_json(self) -> str:
        """The ``emmax.json`` text (sorted keys, trailing newline)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, path: Path) -> None:
        """Write ``emmax.json`` to ``path`` (callers write into a temporary folder or file).

        Args:
            path: the file to write.
        """
        Path(path).write_text(self.to_json(), encoding="utf-8")


@dataclass
class ResolvedModel:
    """A model located on disk: the emmax directory (if any), the encoder directory, config."""

    root: Path
    encoder_dir: Path
    config: ModelConfig


def cache_dir() -> Path:
    """Where emmax keeps built models.

    Returns:
        ``$EMMAX_HOME``, else ``$XDG_CACHE_HOME/emmax``, else ``~/.cache/emmax``.
    """
    if os.environ.get("EMMAX_HOME"):
        return Path(os.environ["EMMAX_HOME"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "emmax"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The sha256 of a file, read in chunks.

    Args:
        path: the file.
        chunk: bytes per read.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def quick_fingerprint(path: Path) -> str:
    """A cheap identity for a foreign weights file: size plus hashes of its first and last MiB.

    Args:
        path: the weights file.

    Returns:
        A hex digest (not the file's sha256).
    """
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()


def weights_file(encoder_dir: Path) -> Path | None:
    """The encoder's weights file.

    Args:
        encoder_dir: a transformers model directory.

    Returns:
        ``model.safetensors``, else ``pytorch_model.bin``, else None.
    """
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (encoder_dir / name).exists():
            return encoder_dir / name
    return None
