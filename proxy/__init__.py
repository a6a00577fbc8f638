"""The proxy: forwarding, the serialising gate, the app and the CLI.

Other packages use the contract: :class:`Exchange`, :class:`Stage`,
:class:`Pipeline` and the :class:`AppContext` a component receives. The app itself
(``proxy.app.create_app``) is the composition root and imports them.
"""

from proxy.context import AppContext, Component
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
]
