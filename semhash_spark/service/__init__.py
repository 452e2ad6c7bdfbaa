"""The lookup service: an HTTP API over the published index on S3 (see app.build_app, app.serve_main).

Names are imported on first use, so that ``semhash``'s parser can read the serve flags (``settings``) without
loading the web stack.

It may import ``index``, ``models``, ``data``, ``io`` and the top-level modules ``config``, ``codes``,
``resources``, ``progress`` (checked by tests/test_layout.py).
"""

from .settings import Settings, SettingsError, add_serve_arguments

__all__ = ["Settings", "SettingsError", "add_serve_arguments", "build_app", "running_server", "serve_main"]


def __getattr__(name):
    if name in ("build_app", "running_server", "serve_main"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
