"""TensorBoard's own projector plugin, served headless, for tests that read our files back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def serve(log_root: Path) -> Callable[..., bytes]:
    """TensorBoard's own projector plugin over ``log_root``, as its Projector tab queries it."""
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.base_plugin import TBContext
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin
    from werkzeug.test import Client

    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(log_root))
    multiplexer.Reload()
    provider = MultiplexerDataProvider(multiplexer, str(log_root))
    plugin = ProjectorPlugin(TBContext(logdir=str(log_root), data_provider=provider))
    apps = plugin.get_plugin_apps()

    def get(route: str, **query: str) -> bytes:
        resp = Client(apps[route]).get(route, query_string=query)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_data()

    return get
