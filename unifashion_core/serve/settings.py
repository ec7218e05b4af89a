"""How `unifashion serve` runs: its settings, and the check that keeps writes off an open network."""

import ipaddress
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from unifashion_core.errors import UserError

MAX_K = 100  # results per search
MAX_ITEMS_PER_UPSERT = 64
MAX_TEXT_CHARS = 2000
MAX_GENERATION_STEPS = 100
DEFAULT_MAX_BODY_BYTES = 16 * 2**20
DEFAULT_MAX_PIXELS = 16_000_000  # 4000 x 4000; decoding one costs ~50 MB
SETTINGS_ENV = "UNIFASHION_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker


@dataclass(frozen=True)
class ServeSettings:
    """What one server serves and how.

    Attributes:
        index: the index directory (its live catalogue is served).
        checkpoint: the query model; None: the checkpoint that built the index.
        host: the address to bind (loopback by default).
        port: the TCP port.
        api_key_env: the environment variable holding the API key that write endpoints need,
            or None (then writes are refused off loopback, see :func:`check_exposure`).
        read_only: refuse every write (``POST``/``DELETE /items``).
        max_body_bytes: larger request bodies get 413.
        max_pixels: larger images get 413.
        generate: load the generator head (``POST /generate``) when the checkpoint has one.
        workers: uvicorn worker processes (each loads the model; writes are shared through the index).
        threads: torch's threads for embedding search queries (None: one less than the cores, at
            least one, leaving a core to the HTTP side); captions and generation use every core.
    """

    index: Path
    checkpoint: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str | None = None
    read_only: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    generate: bool = True
    workers: int = 1
    threads: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be between 0 and 65535, got {self.port}.")
        if self.max_body_bytes < 1024 or self.max_pixels < 1:
            raise UserError("the body limit must be at least 1 KiB and the pixel limit at least 1.")
        if not 1 <= self.workers <= 64:
            raise UserError(f"--workers must be between 1 and 64, got {self.workers}.")
        if self.threads is not None and not 1 <= self.threads <= 256:
            raise UserError(f"--threads must be between 1 and 256, got {self.threads}.")

    def query_threads(self) -> int:
        """Torch's threads for embedding search queries, the default filled in for this machine."""
        return self.threads or max(1, (os.cpu_count() or 1) - 1)

    def api_key(self) -> str | None:
        """The API key from ``api_key_env``.

        Raises:
            UserError: the variable is named but unset or empty.
        """
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key.strip():
            raise UserError(f"--api-key-env names {self.api_key_env}, but that environment variable is unset or "
                            "empty; export the key in it.")
        return key

    def to_env(self) -> str:
        """The settings as JSON for :data:`SETTINGS_ENV` (the key itself stays in its own variable)."""
        return json.dumps({name: str(value) if isinstance(value, Path) else value
                           for name, value in asdict(self).items()})

    @classmethod
    def from_env(cls, text: str) -> "ServeSettings":
        """The settings :meth:`to_env` wrote."""
        data = json.loads(text)
        data["index"] = Path(data["index"])
        data["checkpoint"] = Path(data["checkpoint"]) if data["checkpoint"] else None
        return cls(**data)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_exposure(settings: ServeSettings) -> None:
    """Refuse to accept writes from the network without an API key.

    Raises:
        UserError: a non-loopback host with writes enabled and no ``api_key_env``; an unset key.
    """
    settings.api_key()
    if not is_loopback(settings.host) and not settings.read_only and settings.api_key_env is None:
        raise UserError(f"refusing to serve writes on {settings.host} without an API key: pass --api-key-env VAR "
                        "(the environment variable holding the key) or --read-only.")
