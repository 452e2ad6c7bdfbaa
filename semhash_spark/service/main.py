"""``semhash serve`` as the CLI imports it (``from semhash_spark.service.main import serve_main``)."""

from .app import add_serve_arguments, serve_main, settings_from_args

__all__ = ["add_serve_arguments", "serve_main", "settings_from_args"]
