"""The lookup service: an HTTP API over the published index on S3 (see app.build_app, app.serve_main)."""
from .app import add_serve_arguments, build_app, running_server, serve_main
from .settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "add_serve_arguments", "build_app", "running_server", "serve_main"]
