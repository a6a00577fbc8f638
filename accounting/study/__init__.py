"""``joulegate bench``: a study of energy and SCI per model and task, request by request.

Modules: :mod:`~accounting.study.prompts` (the bundled task sets and prompt files),
:mod:`~accounting.study.runner` (the protocol), :mod:`~accounting.study.dataset`
(one row per request), :mod:`~accounting.study.stats` and
:mod:`~accounting.study.summary` (means and 95% intervals), :mod:`~accounting.study.plots`
and :mod:`~accounting.study.report` (what it writes), :mod:`~accounting.study.cli`.
"""

from accounting.study.cli import DemoStarter, register

__all__ = ["DemoStarter", "register"]
