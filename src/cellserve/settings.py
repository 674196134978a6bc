"""Every option in one typed object, fed by keyword arguments, CLI flags and the environment.

Precedence: an explicit value (keyword argument or CLI flag) > ``CELLSERVE_<NAME>`` >
the Kernel Gateway variable Kernel Gateway users already set (``KG_PORT``...) > default.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from cellserve.exceptions import SettingsError

DEFAULT_PORT = 9090
"""Not Jupyter's 8888, so the server can run beside the Jupyter you edit the notebook in."""


@dataclass(frozen=True)
class Settings:
    """Options for one cellserve app. Times are in seconds; `max_body_size` is in bytes,
    `max_response_size` in characters of a cell's output (stdout, value and displays)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    base_url: str = "/"
    kernels: int = 1
    kernel_name: str | None = None
    comment_prefix: str | None = None
    execution: str = "fast"
    timeout: float | None = 60.0
    queue_timeout: float = 30.0
    max_queue: int | None = 100
    interrupt_grace: float = 3.0
    seed_timeout: float | None = 600.0
    startup_timeout: float = 60.0
    shutdown_grace: float = 10.0
    reload: bool = False
    reload_debounce: float = 0.3
    auth_token: str | None = None
    auth_token_file: Path | None = None
    allow_origin: str = ""
    allow_methods: str = ""
    allow_headers: str = ""
    allow_credentials: bool = False
    expose_headers: str = ""
    max_age: int = 600
    max_body_size: int = 10 * 1024 * 1024
    max_response_size: int = 64 * 1024 * 1024
    allow_notebook_download: bool = False
    static_path: Path | None = None
    docs: bool = True
    job_ttl: float = 3600.0
    max_jobs: int = 100
    start_on_first_request: bool = False
    workers: int = 1
    access_log: bool = True
    seed_output: bool = False
    transport: str = "ipc"
    drain_delay: float = 0.0
    kernel_memory_limit: int | None = None
    pipeline_depth: int = 2

    def __post_init__(self) -> None:
        # An empty token means "no auth", as in Kernel Gateway; never "auth with ''".
        if self.auth_token == "":
            object.__setattr__(self, "auth_token", None)
        if self.auth_token_file is not None:
            # Read once, here: the token then travels like one given directly.
            if self.auth_token is not None:
                raise SettingsError("give the auth token or an auth token file, not both")
            object.__setattr__(self, "auth_token", _read_token(self.auth_token_file))
            object.__setattr__(self, "auth_token_file", None)
        if self.kernels < 1:
            raise SettingsError(f"kernels must be at least 1, got {self.kernels}")
        if self.workers < 1:
            raise SettingsError(f"workers must be at least 1, got {self.workers}")
        if self.pipeline_depth < 1:
            raise SettingsError(f"pipeline_depth must be at least 1, got {self.pipeline_depth}")
        if isinstance(self.kernel_memory_limit, str):  # "512M" from a flag or a keyword
            try:
                object.__setattr__(self, "kernel_memory_limit", to_bytes(self.kernel_memory_limit))
            except ValueError as exc:
                raise SettingsError(f"kernel_memory_limit: {exc}") from None
        if self.kernel_memory_limit is not None and self.kernel_memory_limit <= 0:
            raise SettingsError(
                f"kernel_memory_limit must be positive, got {self.kernel_memory_limit}"
            )
        if not (math.isfinite(self.drain_delay) and self.drain_delay >= 0):
            raise SettingsError(f"drain_delay must be 0 or more seconds, got {self.drain_delay}")
        if self.execution not in ("fast", "execute"):
            raise SettingsError(f"execution must be 'fast' or 'execute', got {self.execution!r}")
        if self.transport not in ("ipc", "tcp"):
            raise SettingsError(f"transport must be 'ipc' or 'tcp', got {self.transport!r}")
        if not self.base_url.startswith("/"):
            raise SettingsError(f"base_url must start with '/', got {self.base_url!r}")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0-65535, got {self.port}")
        if self.max_queue is not None and self.max_queue < 0:
            raise SettingsError(f"max_queue must be 0 or more, got {self.max_queue}")
        for name in (
            "timeout",
            "queue_timeout",
            "interrupt_grace",
            "seed_timeout",
            "startup_timeout",
            "max_body_size",
            "max_response_size",
            "job_ttl",
            "max_jobs",
        ):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise SettingsError(f"{name} must be a positive number, got {value}")

    @property
    def mount_prefix(self) -> str:
        """The base URL without its trailing slash ('' for the root)."""
        return self.base_url.rstrip("/")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **explicit: Any) -> Settings:
        """Defaults, then the environment, then `explicit` values that are not None."""
        environ = os.environ if environ is None else environ
        unknown = set(explicit) - {f.name for f in fields(cls)}
        if unknown:
            raise SettingsError(f"unknown option(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            for variable in env_names(f.name):
                if variable in environ:
                    values[f.name] = _convert(f.name, environ[variable], variable)
                    break
        explicit = {k: v for k, v in explicit.items() if v is not None}
        # A token given explicitly, directly or as a file, beats either from the environment.
        for given, other in (("auth_token", "auth_token_file"), ("auth_token_file", "auth_token")):
            if given in explicit and other not in explicit:
                values.pop(other, None)
        values.update(explicit)
        return cls(**values)

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)


_KG_NAMES = {
    "host": "KG_IP",
    "port": "KG_PORT",
    "base_url": "KG_BASE_URL",
    "kernels": "KG_PRESPAWN_COUNT",
    "kernel_name": "KG_FORCE_KERNEL_NAME",
    "auth_token": "KG_AUTH_TOKEN",
    "allow_origin": "KG_ALLOW_ORIGIN",
    "allow_methods": "KG_ALLOW_METHODS",
    "allow_headers": "KG_ALLOW_HEADERS",
    "allow_credentials": "KG_ALLOW_CREDENTIALS",
    "expose_headers": "KG_EXPOSE_HEADERS",
    "max_age": "KG_MAX_AGE",
    "allow_notebook_download": "KG_ALLOW_NOTEBOOK_DOWNLOAD",
    "static_path": "KG_STATIC_PATH",
}


def env_names(option: str) -> tuple[str, ...]:
    """The environment variables read for `option`, strongest first."""
    kg = _KG_NAMES.get(option)
    own = "CELLSERVE_" + option.upper()
    return (own, kg) if kg else (own,)


def _convert(name: str, raw: str, variable: str) -> Any:
    field_type = str({f.name: f.type for f in fields(Settings)}[name])
    value = raw.strip()
    if "None" in field_type and value.lower() in ("", "none", "off"):
        return None
    converter: Callable[[str], Any]
    if name == "kernel_memory_limit":
        converter = to_bytes
    elif "bool" in field_type:
        converter = _to_bool
    elif "Path" in field_type:
        converter = Path
    elif "float" in field_type:
        converter = float
    elif "int" in field_type:
        converter = int
    else:
        converter = str
    try:
        return converter(value)
    except ValueError as exc:
        raise SettingsError(f"{variable}={raw!r}: {exc}") from exc


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read the auth token file {path}: {exc}") from exc
    if not token:
        raise SettingsError(f"the auth token file {path} is empty")
    return token


def _to_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


_SIZE = re.compile(r"(?i)(\d+(?:\.\d+)?)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)")
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def to_bytes(raw: str) -> int:
    """Bytes from ``"1073741824"``, ``"512M"``, ``"1.5GiB"``... (K, M, G, T: powers of 1024).

    >>> to_bytes("2G")
    2147483648
    """
    found = _SIZE.fullmatch(raw.strip())
    if found is None:
        raise ValueError(f"{raw!r} is not a size in bytes or like 512M, 2G")
    number, unit = found.groups()
    return int(float(number) * _UNITS[unit[:1].lower()])
