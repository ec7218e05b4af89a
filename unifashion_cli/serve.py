"""`unifashion serve`: the catalogue search service (HTTP API, web gallery, live catalogue)."""

from pathlib import Path

import typer

from unifashion_cli.console import err, handle_errors
from unifashion_core.serve.settings import ServeSettings

SERVE_MODULES = ("fastapi", "uvicorn", "multipart", "prometheus_client")


@handle_errors
def serve(
    index_dir: Path | None = typer.Option(None, "--index", help="Index directory (default: workspace latest)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Query model (default: the index's)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (each loads the model; they share the "
                                "catalogue through the index directory)."),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="Environment variable holding the API key "
                                           "that POST/DELETE /items need (required off loopback unless --read-only)."),
    read_only: bool = typer.Option(False, "--read-only", help="Refuse every upsert and delete."),
    max_body_mb: float = typer.Option(16.0, "--max-body-mb", help="Larger request bodies get 413."),
    max_pixels: int = typer.Option(16_000_000, "--max-pixels", help="Larger images get 413."),
    no_generate: bool = typer.Option(False, "--no-generate", help="Do not load the generator (less memory; "
                                     "POST /generate answers 501)."),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads embedding search queries (default: "
                                       "one less than the cores, leaving one to the HTTP side; captions and "
                                       "generation use every core)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's: warning hides the access log."),
) -> None:
    """Serve search, items, captions and generation over HTTP, with a web gallery at / and the API at /docs."""
    import importlib.util

    from unifashion_core.errors import UserError

    if missing := [name for name in SERVE_MODULES if importlib.util.find_spec(name) is None]:
        raise UserError(f"`unifashion serve` needs the serve extra ({', '.join(missing)} missing): "
                        "pip install 'unifashion[serve]'.")
    from unifashion_cli import workspace
    from unifashion_core.serve.settings import check_exposure

    settings = ServeSettings(index=workspace.resolve("index", index_dir), checkpoint=checkpoint, host=host, port=port,
                             api_key_env=api_key_env, read_only=read_only,
                             max_body_bytes=int(max_body_mb * 2**20), max_pixels=max_pixels,
                             generate=not no_generate, workers=workers, threads=threads)
    check_exposure(settings)
    _check_port(host, port)
    if workers == 1:
        _run_one(settings, log_level)
    else:
        _run_workers(settings, log_level)


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before minutes of loading (uvicorn would only say so after)."""
    import socket

    from unifashion_core.errors import UserError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}.") from exc


def _run_one(settings: ServeSettings, log_level: str) -> None:
    import uvicorn

    from unifashion_core.serve.app import create_app

    app = create_app(settings)  # loads the model and the catalogue; a refusal exits 2 before binding
    view = app.state.service.snapshot()
    err.print(f"serving {view.num_items} items of {settings.index} on http://{settings.host}:{settings.port} "
              f"(gallery /, API docs /docs); writes: {'disabled' if settings.read_only else 'enabled'}")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level)


def _run_workers(settings: ServeSettings, log_level: str) -> None:
    import os
    import tempfile

    import uvicorn

    from unifashion_core.serve.service import check_compatible
    from unifashion_core.serve.settings import SETTINGS_ENV

    check_compatible(settings)  # each worker loads (and checks) everything itself
    os.environ[SETTINGS_ENV] = settings.to_env()
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="unifashion-metrics-"))
    err.print(f"serving {settings.index} on http://{settings.host}:{settings.port} with {settings.workers} workers "
              "(gallery /, API docs /docs)")
    uvicorn.run("unifashion_core.serve.app:app_from_environment", factory=True, host=settings.host,
                port=settings.port, workers=settings.workers, log_level=log_level)
