"""Run configuration: dataclasses, YAML loading and validation.

Every knob has a default here and is documented in ``configs/default.yaml``
(a test keeps the two in step). YAML is read with ``yaml.safe_load`` only.
Detector knobs live under ``detectors.<name>`` and are the keyword arguments
of the registered detector class, so a new detector needs no change here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


#: Upper bounds that keep an absurd size a config error instead of a MemoryError mid-run.
MAX_BATCH_SIZE = 1 << 20
MAX_TEXT_CHARS = 100_000_000
MAX_RESERVOIR = 10_000_000


@dataclass
class InputConfig:
    """How rows are read from shards."""

    id_column: str | None = None
    text_column: str = "text"
    label_column: str | None = None
    text_template: str | None = None
    response_column: str | None = None
    embedding_column: str | None = None
    max_text_chars: int = 100_000
    batch_size: int = 8192

    def validate(self) -> None:
        if not 1 <= self.max_text_chars <= MAX_TEXT_CHARS:
            raise ConfigError(f"input.max_text_chars must be in [1, {MAX_TEXT_CHARS}], got {self.max_text_chars}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ConfigError(f"input.batch_size must be in [1, {MAX_BATCH_SIZE}], got {self.batch_size}")
        for key in ("id_column", "text_column", "label_column", "embedding_column", "response_column"):
            if getattr(self, key) == "":
                raise ConfigError(f"input.{key} must name a column, got an empty string")
        if self.text_template is not None and "{" not in self.text_template:
            raise ConfigError(
                "input.text_template must name at least one column as {column}, "
                f"got {self.text_template!r}"
            )
        if self.response_column is not None:
            from shardguard.validate import template_fields

            if self.text_template is None or self.response_column not in template_fields(self.text_template):
                raise ConfigError(
                    f"input.response_column {self.response_column!r} must be one of the columns of "
                    f"input.text_template (got template {self.text_template!r})"
                )


#: Which later copies of a row are quarantined as ``near_duplicate`` (see configs/default.yaml).
COPY_MODES = ("conflicting", "all", "none")


@dataclass
class NearDuplicateConfig:
    """MinHash LSH near-duplicate detection across all shards of a run."""

    enabled: bool = True
    threshold: float = 0.5
    num_perm: int = 128
    ngram: int = 3
    flood_size: int = 20
    flood_agreement: float = 0.65
    copies: str = "conflicting"
    seed: int = 1

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError("near_duplicates.threshold must be in (0, 1]")
        if self.num_perm < 16 or self.num_perm > 1024:
            raise ConfigError("near_duplicates.num_perm must be in [16, 1024]")
        if not 1 <= self.ngram <= 64:
            raise ConfigError("near_duplicates.ngram must be in [1, 64]")
        if self.flood_size < 2:
            raise ConfigError("near_duplicates.flood_size must be >= 2")
        if not 0.0 <= self.flood_agreement <= 1.0:
            raise ConfigError("near_duplicates.flood_agreement must be in [0, 1]")
        if self.seed < 0:
            raise ConfigError("near_duplicates.seed must be >= 0")
        if self.copies not in COPY_MODES:
            raise ConfigError(f"near_duplicates.copies must be one of {', '.join(COPY_MODES)}, got {self.copies!r}")


@dataclass
class EmbedConfig:
    """Which embedder turns rows into vectors."""

    embedder: str = "auto"  # or "sentence-transformers", "static", "hashing", "precomputed", "none"
    model: str | None = None  # local path; None = the packaged all-MiniLM-L6-v2
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    batch_size: int = 64
    max_seq_length: int | None = None
    static_dim: int = 256
    cache_dir: str | None = None  # None: $SHARDGUARD_CACHE_DIR, $XDG_CACHE_HOME/shardguard, ~/.cache/shardguard
    hashing_dim: int = 384
    cache: bool = True

    EMBEDDERS = ("auto", "sentence-transformers", "static", "hashing", "precomputed", "none")

    def validate(self) -> None:
        if self.embedder not in self.EMBEDDERS:
            raise ConfigError(
                f"embed.embedder must be one of {', '.join(self.EMBEDDERS)}, got {self.embedder!r}"
            )
        if not 1 <= self.batch_size <= 65536:
            raise ConfigError("embed.batch_size must be in [1, 65536]")
        if not 2 <= self.hashing_dim <= 65536:
            raise ConfigError("embed.hashing_dim must be in [2, 65536]")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            raise ConfigError(f"embed.cache_dir must be a folder path (a string), got {self.cache_dir!r}")
        if self.model is not None and not isinstance(self.model, str):
            raise ConfigError(f"embed.model must be a folder path (a string), got {self.model!r}")
        if not 2 <= self.static_dim <= 4096:
            raise ConfigError("embed.static_dim must be in [2, 4096]")


@dataclass
class FitConfig:
    """The fit between the two passes."""

    reservoir_size: int = 50_000

    def validate(self) -> None:
        if not 100 <= self.reservoir_size <= MAX_RESERVOIR:
            raise ConfigError(f"fit.reservoir_size must be in [100, {MAX_RESERVOIR}], got {self.reservoir_size}")


@dataclass
class ReviewConfig:
    """What a person decided on an earlier scan, and what the lists show them to review."""

    allow: str | None = None  # file of ids confirmed clean: one per line, or a Parquet id column
    text_chars: int = 200  # characters of each flagged row's text in the quarantine lists (0: none)

    def validate(self) -> None:
        if self.text_chars < 0:
            raise ConfigError("review.text_chars must be >= 0")


ENGINES = ("local", "ray")


@dataclass
class EngineConfig:
    """Where ``scan`` runs its maps and reduces. Never part of a run's key: the lists do not
    depend on it, and either engine resumes the other's run."""

    kind: str = "local"  # local: this process; ray: a Ray cluster (pip install 'shardguard[ray]')
    ray_address: str | None = None  # a running cluster; None: $RAY_ADDRESS, else a new local one
    ray_cpus: int | None = None  # CPUs of the new local cluster (None: all)

    def validate(self) -> None:
        if self.kind not in ENGINES:
            raise ConfigError(f"engine.kind must be one of {', '.join(ENGINES)}, got {self.kind!r}")
        if self.ray_cpus is not None and (isinstance(self.ray_cpus, bool) or not isinstance(self.ray_cpus, int)
                                          or self.ray_cpus < 1):
            raise ConfigError(f"engine.ray_cpus must be an integer >= 1, got {self.ray_cpus!r}")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address.strip()):
            raise ConfigError("engine.ray_address must be an address such as auto or HOST:6379, "
                              f"got {self.ray_address!r}")
        if self.kind != "ray" and (self.ray_address is not None or self.ray_cpus is not None):
            raise ConfigError("engine.ray_address and engine.ray_cpus (--ray-address, --ray-cpus) go with "
                              "engine.kind: ray (--engine ray)")
        if self.ray_cpus is not None and self.ray_address not in (None, "local"):
            raise ConfigError("engine.ray_cpus (--ray-cpus) sizes a new local cluster: it does not go with "
                              "engine.ray_address (--ray-address)")


@dataclass
class GuardConfig:
    """The library ``Guard``'s own knobs (``scan`` ignores them)."""

    cache_rows: int = 100_000  # embeddings memoised per process, by text hash (0: none)

    def validate(self) -> None:
        if self.cache_rows < 0:
            raise ConfigError("guard.cache_rows must be >= 0")


def _default_detectors() -> dict[str, dict[str, Any]]:
    """Every registered detector, on unless its class says ``enabled_by_default = False``,
    with its constructor defaults as knobs.

    ``random_state`` is left out: detectors take the run's top-level one unless
    a detector's own is set.
    """
    from shardguard.detectors import REGISTRY

    out = {}
    for name, cls in REGISTRY.items():
        params = {k: v for k, v in cls().get_params().items() if k != "random_state"}
        out[name] = {"enabled": bool(getattr(cls, "enabled_by_default", True)), **params}
    return out


@dataclass
class Config:
    """The whole resolved configuration of a run."""

    input: InputConfig = field(default_factory=InputConfig)
    near_duplicates: NearDuplicateConfig = field(default_factory=NearDuplicateConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    detectors: dict[str, dict[str, Any]] = field(default_factory=_default_detectors)
    random_state: int = 0

    def validate(self) -> "Config":
        self.input.validate()
        self.near_duplicates.validate()
        self.embed.validate()
        self.fit.validate()
        self.review.validate()
        self.guard.validate()
        self.engine.validate()
        from shardguard.detectors import REGISTRY

        for name, params in self.detectors.items():
            if name not in REGISTRY:
                raise ConfigError(
                    f"detectors.{name}: unknown detector; known: {', '.join(sorted(REGISTRY))}"
                )
            if not isinstance(params, dict):
                raise ConfigError(f"detectors.{name} must be a mapping, got {type(params).__name__}")
            allowed = set(REGISTRY[name]._get_param_names()) | {"enabled"}
            unknown = set(params) - allowed
            if unknown:
                raise ConfigError(
                    f"detectors.{name}: unknown knob(s) {', '.join(sorted(map(str, unknown)))}; "
                    f"known: {', '.join(sorted(allowed))}"
                )
            defaults = {"enabled": True, **REGISTRY[name]().get_params()}
            for knob, value in params.items():
                params[knob] = _coerce(value, defaults[knob], f"detectors.{name}.{knob}")
            knobs = {k: v for k, v in params.items() if k != "enabled"}
            try:  # the detector's own ranges, now rather than after the embedding pass
                REGISTRY[name](**knobs).check_params()
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"detectors.{name}.{exc}") from None
        if self.random_state is not None and (not isinstance(self.random_state, int) or self.random_state < 0):
            raise ConfigError(f"random_state must be an integer >= 0, got {self.random_state!r}")
        if self.embed.embedder == "precomputed" and not self.input.embedding_column:
            raise ConfigError("embed.embedder 'precomputed' needs input.embedding_column")
        return self

    def enabled_detectors(self) -> dict[str, dict[str, Any]]:
        """Detector name -> constructor kwargs, for the detectors switched on."""
        if self.embed.embedder == "none":
            return {}
        out = {}
        for name, params in self.detectors.items():
            params = dict(params)
            if params.pop("enabled", True):
                out[name] = params
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """sha256 of the canonical JSON form; two runs with equal digests score alike."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


_SECTIONS = {
    "input": InputConfig,
    "near_duplicates": NearDuplicateConfig,
    "embed": EmbedConfig,
    "fit": FitConfig,
    "review": ReviewConfig,
    "guard": GuardConfig,
    "engine": EngineConfig,
}


def _build_section(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for key, value in data.items():
        default = getattr(cls(), key)
        kwargs[key] = _coerce(value, default, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a YAML value against the type of its default; ints widen to floats."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if value is None or default is None:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a single value, got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def config_from_dict(data: Mapping[str, Any] | None) -> Config:
    """Build and validate a :class:`Config` from a plain mapping (parsed YAML)."""
    data = dict(data or {})
    allowed = set(_SECTIONS) | {"detectors", "random_state"}
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}; "
            f"known: {', '.join(sorted(allowed))}"
        )
    kwargs: dict[str, Any] = {
        name: _build_section(cls, data.get(name), name) for name, cls in _SECTIONS.items()
    }
    detectors = _default_detectors()
    given = data.get("detectors")
    if given is not None:
        if not isinstance(given, Mapping):
            raise ConfigError("detectors must be a mapping of detector name -> knobs")
        for name, params in given.items():
            if params is None:
                params = {}
            if not isinstance(params, Mapping):
                raise ConfigError(f"detectors.{name} must be a mapping, got {params!r}")
            detectors.setdefault(str(name), {}).update(params)
    kwargs["detectors"] = detectors
    rs = data.get("random_state", 0)
    kwargs["random_state"] = _coerce(rs, 0, "random_state")
    return Config(**kwargs).validate()


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a YAML config (``yaml.safe_load``), apply dotted overrides, validate.

    ``overrides`` maps dotted keys (``"near_duplicates.threshold"``) to values;
    the CLI's flags and ``--set`` arrive here.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or 'cannot be parsed'}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded
    for dotted, value in (overrides or {}).items():
        parts = dotted.split(".")
        node = data
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"cannot set {dotted}: {part} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise
