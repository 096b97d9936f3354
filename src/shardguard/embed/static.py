"""Static (model2vec) embedder: a token-embedding table distilled from a sentence-transformers model.

A static model embeds a text as the mean of its tokens' vectors, with no
transformer pass: on two CPU cores it runs 50-200x faster than the model it was
distilled from (see the README's performance section). model2vec's ``distill``
runs every token of the source model's vocabulary through the source model once,
reduces the outputs to ``dim`` principal components and weights them by token
rank (SIF); the result loads as ``model2vec.StaticModel``.

Where the model comes from (:func:`resolve_static_model`):

* ``embed.model`` names a model2vec folder (its ``config.json`` says
  ``"model_type": "model2vec"``): that folder, as it is. If it carries a
  ``shardguard-static.json`` (written by ``shardguard model distill``), every
  file is checked against the digests recorded there and a mismatch is an error.
* otherwise ``embed.model`` is the SOURCE: a local sentence-transformers folder,
  None for the packaged all-MiniLM-L6-v2. The static model is distilled from it
  on first use, offline, and cached under ``<cache_dir>/static/<key>``, where the
  key is a sha256 of the source's weight digest and the distillation parameters,
  so a new source or new parameters make a new model. A cached model whose files
  do not match their recorded digests is rebuilt (with a warning), never used.

Distillation needs torch and transformers (model2vec's ``distill`` extra);
embedding with a built model needs neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shardguard.config import ConfigError
from shardguard.embed.base import TextEmbedder

log = logging.getLogger(__name__)

#: The file that records how a static model was made and the sha256 of each of its files.
RECORD_NAME = "shardguard-static.json"
#: Version of the record's layout and of the distillation recipe below.
RECIPE_VERSION = 1
#: model2vec's defaults, kept explicit so that they enter the cache key.
SIF_COEFFICIENT = 1e-4
#: Tokens the source vocabulary holds but that never occur in text ("[unused12]").
TOKEN_REMOVE_PATTERN = r"\[unused\d+\]"


class StaticModelError(ConfigError):
    """A static model folder is missing, incomplete or does not match its recorded digests."""


def default_cache_dir() -> Path:
    """``$SHARDGUARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/shardguard``, else ``~/.cache/shardguard``."""
    env = os.environ.get("SHARDGUARD_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "shardguard"


def is_static_model_dir(path: Path) -> bool:
    """True when ``path`` is a model2vec model folder (``config.json`` with model_type model2vec)."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == "model2vec"


def _file_digests(path: Path) -> dict[str, str]:
    """sha256 of every regular file in ``path`` (recursively) but the record, by relative POSIX path."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name != RECORD_NAME:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
            out[p.relative_to(path).as_posix()] = h.hexdigest()
    return out


def model_digest(files: dict[str, str]) -> str:
    """One sha256 over a folder's file digests (name, NUL, digest, newline; sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


def verify_static_model(path: Path) -> dict[str, Any]:
    """Check a folder against its ``shardguard-static.json``; return the record.

    Raises :class:`StaticModelError` naming the first file that is missing, extra
    or changed, or when the record itself is unreadable.
    """
    rec_path = path / RECORD_NAME
    try:
        record = json.loads(rec_path.read_text(encoding="utf-8"))
        recorded = dict(record["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StaticModelError(f"static model {path}: cannot read {RECORD_NAME}: {exc}") from None
    actual = _file_digests(path)
    for name in sorted(set(recorded) | set(actual)):
        if name not in actual:
            raise StaticModelError(f"static model {path}: file {name} is missing")
        if name not in recorded:
            raise StaticModelError(f"static model {path}: file {name} is not in {RECORD_NAME}")
        if recorded[name] != actual[name]:
            raise StaticModelError(
                f"static model {path}: {name} does not match its recorded sha256 (changed or corrupted)"
            )
    if record.get("model_sha256") != model_digest(actual):
        raise StaticModelError(f"static model {path}: model_sha256 in {RECORD_NAME} does not match its files")
    return record


def distill_params(dim: int) -> dict[str, Any]:
    """The distillation parameters that enter the cache key and the record."""
    return {
        "recipe": RECIPE_VERSION,
        "pca_dims": int(dim),
        "sif_coefficient": SIF_COEFFICIENT,
        "token_remove_pattern": TOKEN_REMOVE_PATTERN,
        "quantize_to": "float32",
    }


def cache_key(source_sha256: str, params: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the source's weight digest and the distillation parameters."""
    blob = json.dumps({"source": source_sha256, "params": params}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def distill_static_model(
    source: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    dim: int = 256,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Distil a static model from a local sentence-transformers model into ``out``; return its record.

    Offline (``HF_HUB_OFFLINE=1``): the source is read from its local folder only.
    The model is written into a temporary folder beside ``out`` and renamed into
    place, so a crash never leaves a half-written model; when ``out`` exists it is
    replaced only with ``overwrite=True``. Takes 1-4 minutes for MiniLM on two CPU
    cores; model2vec shows a progress bar on a terminal.
    """
    from shardguard.embed.sentence_transformer import DEFAULT_MODEL_NAME, resolve_model_path, weights_digest

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    src = resolve_model_path(source)
    if is_static_model_dir(src):
        raise ConfigError(f"{src} is already a static (model2vec) model; distil from a sentence-transformers model")
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another folder or remove it")
    if int(dim) < 2:
        raise ConfigError(f"the static model's dimension must be >= 2, got {dim}")
    try:
        from model2vec.distill import distill
    except ImportError as exc:  # pragma: no cover - the distill extra is a core dependency
        raise ConfigError(
            f"distilling a static model needs model2vec's distill extra: pip install 'model2vec[distill]' ({exc})"
        ) from None
    source_sha = weights_digest(src)
    params = distill_params(dim)
    log.info("distilling a static model from %s (dim %d); this runs once and is cached", src, dim)
    try:
        model = distill(
            str(src),
            pca_dims=int(dim),
            sif_coefficient=SIF_COEFFICIENT,
            token_remove_pattern=TOKEN_REMOVE_PATTERN,
            quantize_to="float32",
            trust_remote_code=False,
        )
    except Exception as exc:  # noqa: BLE001 - model2vec/transformers raise many kinds
        raise ConfigError(f"cannot distil a static model from {src}: {exc}") from exc
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise ConfigError(f"cannot write the static model into {out.parent}: {exc.strerror or exc}; "
                          "set embed.cache_dir (or SHARDGUARD_CACHE_DIR) to a writable folder") from None
    try:
        model.save_pretrained(str(tmp))
        files = _file_digests(tmp)
        record = {
            "format": RECIPE_VERSION,
            "tool": "shardguard",
            "source_model": DEFAULT_MODEL_NAME if source is None else src.name,
            "source_model_path": str(src),
            "source_weights_sha256": source_sha,
            "params": params,
            "dim": int(model.dim),
            "model_sha256": model_digest(files),
            "files": files,
        }
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
        for p in tmp.rglob("*"):  # mkdtemp makes 0700; the model is meant to be shared
            p.chmod(0o644 if p.is_file() else 0o755)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / RECORD_NAME).exists():
                raise
            # another process distilled the same model into place meanwhile: keep that one
            shutil.rmtree(tmp, ignore_errors=True)
            return verify_static_model(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("static model written to %s", out)
    return record


_BUILD_LOCK = threading.Lock()


def resolve_static_model(
    model: str | None,
    cache_dir: str | os.PathLike[str] | None = None,
    dim: int = 256,
    build: Callable[..., dict[str, Any]] = distill_static_model,
) -> tuple[Path, dict[str, Any]]:
    """The static model folder for ``embed.model`` and what the manifest records of it.

    See the module docstring for the rules. Returns ``(folder, info)`` where info
    holds ``weights_sha256`` (the static model's digest), ``source_model``,
    ``source_weights_sha256`` (None for a user's own model2vec folder without a
    record), ``distill_params`` and ``origin`` (``given``, ``cache`` or ``distilled``).
    """
    from shardguard.embed.sentence_transformer import DEFAULT_MODEL_NAME, resolve_model_path, weights_digest

    if model is not None:
        path = Path(model).expanduser()
        if path.is_dir() and is_static_model_dir(path):
            path = path.resolve()
            if (path / RECORD_NAME).exists():
                rec = verify_static_model(path)
                return path, _info(rec["model_sha256"], rec, "given")
            return path, _info(model_digest(_file_digests(path)), None, "given")
    src = resolve_model_path(model)
    params = distill_params(dim)
    key = cache_key(weights_digest(src), params)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / "static" / key
    with _BUILD_LOCK:
        if target.exists():
            try:
                rec = verify_static_model(target)
                return target, _info(rec["model_sha256"], rec, "cache")
            except StaticModelError as exc:
                log.warning("%s; distilling it again", exc)
        name = DEFAULT_MODEL_NAME if model is None else src.name
        log.warning("no cached static model for %s (key %s): distilling one now (once; cached in %s)",
                    name, key, target.parent)
        build(model, target, dim=dim, overwrite=True)
        rec = verify_static_model(target)
        return target, _info(rec["model_sha256"], rec, "distilled")


def _info(sha: str, record: dict[str, Any] | None, origin: str) -> dict[str, Any]:
    return {
        "weights_sha256": sha,
        "source_model": record.get("source_model") if record else None,
        "source_weights_sha256": record.get("source_weights_sha256") if record else None,
        "distill_params": record.get("params") if record else None,
        "origin": origin,
    }


class StaticEmbedder(TextEmbedder):
    """Embeds rows with a model2vec static model (see the module docstring).

    Parameters
    ----------
    model : str or None
        A model2vec folder, or the local sentence-transformers model to distil
        one from (None: the packaged all-MiniLM-L6-v2).
    cache_dir : str or None
        Where distilled models are cached (None: :func:`default_cache_dir`).
    dim : int, default 256
        Dimension of a distilled model (principal components kept).
    max_seq_length : int or None
        Tokens per text; None = the model's own cap (512 for distilled models).
    batch_size : int, default 1024
        Texts per model2vec call.

    Output: float32, L2-normalised rows of shape ``(n, model dim)``.
    """

    kind = "static"
    semantic = True

    def __init__(
        self,
        model: str | None = None,
        cache_dir: str | None = None,
        dim: int = 256,
        max_seq_length: int | None = None,
        batch_size: int = 1024,
    ) -> None:
        if int(dim) < 2:
            raise ConfigError(f"embed.static_dim must be >= 2, got {dim!r}")
        self.model = model
        self.cache_dir = cache_dir
        self.static_dim = int(dim)
        self.max_seq_length = None if max_seq_length is None else int(max_seq_length)
        self.batch_size = max(int(batch_size), 1)
        self.model_path, self.info = resolve_static_model(model, cache_dir, self.static_dim)
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from model2vec import StaticModel

                try:
                    m = StaticModel.from_pretrained(str(self.model_path), force_download=False)
                except Exception as exc:  # noqa: BLE001 - surface a clear message
                    raise ConfigError(f"cannot load the static model from {str(self.model_path)!r}: {exc}") from exc
                if self.max_seq_length is not None:
                    m.max_length = self.max_seq_length
                self._model = m
            return self._model

    @property
    def dim(self) -> int:
        return int(self._load().dim)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit rows, in input order; a text without a known token is a zero row."""
        m = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Threads inside model2vec only pay off past ~10k texts; our record batches are 8k rows.
        e = m.encode(texts, batch_size=self.batch_size, use_multiprocessing=False, normalize=False)
        e = np.asarray(e, dtype=np.float32)
        norms = np.linalg.norm(e, axis=1, keepdims=True)
        np.divide(e, norms, out=e, where=norms > 0)
        return e

    def describe(self) -> dict[str, Any]:
        m = self._load()
        return {
            "kind": self.kind,
            "model": (f"{self.info['source_model']} (static, {int(m.dim)} dims)" if self.info["source_model"]
                      else self.model_path.name),
            "model_path": str(self.model_path),
            "weights_sha256": self.info["weights_sha256"],
            "source_model": self.info["source_model"],
            "source_weights_sha256": self.info["source_weights_sha256"],
            "distill_params": self.info["distill_params"],
            "device": "cpu",
            "dtype": "float32",
            "dim": int(m.dim),
            "normalized": True,
            "max_seq_length": m.max_length,
        }

    def __repr__(self) -> str:
        return f"StaticEmbedder(model={self.model!r}, dim={self.static_dim}, path={str(self.model_path)!r})"
