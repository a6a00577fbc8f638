"""The proxy: forwarding, the serialising gate, the app and the CLI."""

from proxy.app import AppContext, Component, create_app, default_components
from proxy.exchange import Exchange, Pipeline, Stage
from proxy.gate import Gate, Window

__all__ = [
    "AppContext",
    "Component",
    "Exchange",
    "Gate",
    "Pipeline",
    "Stage",
    "Window",
    "create_app",
    "default_components",
]
