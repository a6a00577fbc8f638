"""The ``joulegate`` command.

Each package adds its sub-commands through a ``register(subparsers)`` function
listed in :data:`COMMANDS`; a handler returns the process exit code. Errors
from joulegate's own tree and usage mistakes are printed as one line and exit 2.
Output cut short by its reader (``joulegate export | head -1``) ends quietly
with status 141, as a command killed by SIGPIPE does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from accounting.auth import KeyStore
from accounting.cli import register as register_accounting
from accounting.forecast.cli import register as register_forecast
from accounting.ledger.choose import ledger_from_settings
from accounting.study import register as register_study
from config.cli import add_config_option, settings_from
from config.errors import ConfigError, JoulegateError
from config.settings import Settings
from meters.cli import register as register_meters
from proxy.observability import LogFormat, log_handler

Handler = Callable[[argparse.Namespace], int]

EXIT_BROKEN_PIPE = 128 + 13
"""Exit status when the reader of standard output went away (128 + SIGPIPE)."""


class Parser(argparse.ArgumentParser):
    """argparse with usage mistakes on one line (``joulegate: error: ...``), exit 2.

    Sub-command parsers are made of the same class, so every level answers alike.
    """

    def error(self, message: str) -> NoReturn:
        """Print one line naming the mistake, and exit 2."""
        self.exit(2, f"joulegate: error: {message} (see '{self.prog} --help')\n")


def _configure_logging(level: str, form: LogFormat = "text") -> None:
    logging.basicConfig(level=level.upper(), handlers=[log_handler(form, sys.stderr)])
    # httpx logs every request at INFO (readiness probes, carbon polls): too chatty.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from(args, host=args.host, port=args.port, backend_url=args.backend_url)
    _configure_logging(settings.log_level, settings.log_format)
    run_server(settings)
    return 0


def run_server(settings: Settings) -> None:
    """Serve joulegate with uvicorn until interrupted."""
    import uvicorn

    from proxy.app import create_app
    from proxy.server import http_protocol, raise_open_files_limit

    raise_open_files_limit()  # before http_protocol fits its connection cap in it
    config = uvicorn.Config(
        create_app(settings, freeze_startup_heap=True),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http_protocol(settings),
        lifespan="on",
        access_log=False,  # joulegate writes its own (proxy.observability.accesslog)
        log_level=settings.log_level,
        # JSON lines: uvicorn's own loggers go through joulegate's handler too.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()


def _demo(args: argparse.Namespace) -> int:
    """Start one llama-server per demo model, then joulegate in front of all of them."""
    from proxy.llamacpp import demo_models, llama_servers

    models = demo_models(args.models)
    settings0 = settings_from(args, host=args.host, port=args.port)
    _configure_logging(settings0.log_level, settings0.log_format)
    _check_port_free(settings0.host, settings0.port)
    names = ", ".join(m.title for m in models)
    print(f"starting llama-server for {names} …", flush=True)
    with llama_servers(models, quiet=not args.verbose) as urls:
        settings = settings_from(
            args, host=args.host, port=args.port, backends=",".join(urls.values())
        )
        base = f"http://{settings.host}:{settings.port}/v1"
        print("", flush=True)
        for m in models:
            note = f"  ({m.note})" if m.note else ""
            print(f"llama-server with {m.title} ready at {urls[m.alias]}{note}", flush=True)
        print(f"joulegate is starting at {base}  (Ctrl-C stops all)", flush=True)
        keyed = needs_key(settings)
        if keyed:
            print(_KEYS_NOTE, flush=True)
        for m in models:
            print(demo_snippet(base, m.alias, keyed=keyed), flush=True)
        if settings.console.enabled:
            console = f"http://{settings.host}:{settings.port}{settings.console.path}"
            print(f"── web console ──\nOpen {console} to prompt both models and see what"
                  " each answer cost.\n", flush=True)  # fmt: skip
        # uvicorn turns SIGINT/SIGTERM into a graceful stop and returns; leaving the
        # with-block then stops the model servers.
        with contextlib.suppress(KeyboardInterrupt):
            run_server(settings)
    print("stopped joulegate and the llama-server processes", flush=True)
    return 0


@contextlib.contextmanager
def _bench_demo(args: argparse.Namespace, folder: Path) -> Iterator[str]:
    """``joulegate bench`` without ``--url``: the demo models behind a joulegate served
    from a thread of this process, its ledger in the study folder; yields its URL."""
    import uvicorn

    from proxy.app import create_app
    from proxy.llamacpp import demo_models, free_port, llama_servers
    from proxy.server import http_protocol

    models = demo_models(args.models)
    print(f"starting llama-server for {', '.join(m.title for m in models)} …", file=sys.stderr)
    with llama_servers(models) as urls:
        port = free_port()
        settings = settings_from(
            args,
            host="127.0.0.1",
            port=port,
            backends=",".join(urls.values()),
            **{"ledger.path": str(folder / "ledger.sqlite3")},
        )
        config = uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=port,
            loop="uvloop",
            http=http_protocol(settings),
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)  # off the main thread it installs no signal handlers
        thread = threading.Thread(target=server.run, name="joulegate", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise ConfigError("joulegate did not start for the study (see its log above)")
                time.sleep(0.05)
            print(f"joulegate for the study at http://127.0.0.1:{port}", file=sys.stderr)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(15)


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}); "
                "pass --port or set JOULEGATE_PORT"
            ) from None


def needs_key(settings: Settings) -> bool:
    """Whether a client needs a joulegate key now: ``auth.mode`` keys, or auto with a
    key in the ledger (a demo run after ``joulegate keys create``)."""
    if settings.auth.mode != "auto":
        return settings.auth.mode == "keys"

    async def any_key() -> bool:
        ledger = ledger_from_settings(settings.ledger)
        await ledger.open()
        try:
            keys = KeyStore(ledger)
            await keys.load()
            return keys.any_issued
        finally:
            await ledger.close()

    return asyncio.run(any_key())


def demo_snippet(base: str, model: str, *, keyed: bool) -> str:
    """What the demo prints for one model: Python and curl that work as they are (with
    a key in ``$JG_API_KEY`` when joulegate has keys)."""
    text = _DEMO_SNIPPET.format(base=base, model=model)
    if not keyed:
        return text
    return (
        text.replace('api_key="unused"', 'api_key=os.environ["JG_API_KEY"]')
        .replace(
            "    from openai import OpenAI\n", "    import os\n    from openai import OpenAI\n"
        )
        .replace(
            "-H 'content-type: application/json'",
            "-H 'content-type: application/json' -H \"Authorization: Bearer $JG_API_KEY\"",
        )
    )


_KEYS_NOTE = """
joulegate has API keys: every request needs one. Make yours and put it in JG_API_KEY:

    export JG_API_KEY=$(joulegate keys create --user you)"""

_DEMO_SNIPPET = """
── {model} ──
Python (OpenAI SDK):

    from openai import OpenAI
    client = OpenAI(base_url="{base}", api_key="unused")
    r = client.chat.completions.with_raw_response.create(
        model="{model}", messages=[{{"role": "user", "content": "Say hi"}}], max_tokens=32)
    print(r.headers.get("x-energy-j"), r.parse().model_extra["energy"])

curl:

    curl -s {base}/chat/completions -H 'content-type: application/json' \\
      -d '{{"model": "{model}", "max_tokens": 32,
           "messages": [{{"role": "user", "content": "Say hi"}}]}}' -i
"""


def _register_core(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the proxy")
    add_config_option(serve)
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8400)")
    serve.add_argument("--backend-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8080")
    serve.set_defaults(handler=_serve)

    demo = sub.add_parser(
        "demo", help="run llama-server with the demo models and joulegate in front (make run)"
    )
    add_config_option(demo)
    demo.add_argument("--host", help="listen address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, help="listen port (default 8400)")
    demo.add_argument(
        "--models",
        help="comma-separated demo models to serve (default: all; "
        "smollm2-135m-instruct, gemma-3-270m)",
    )
    demo.add_argument("--verbose", action="store_true", help="show llama-server's own log")
    demo.set_defaults(handler=_demo)


COMMANDS: list[Callable[[Any], None]] = [
    _register_core,
    register_meters,
    register_accounting,
    register_forecast,
    functools.partial(register_study, start_demo=_bench_demo),
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all packages' sub-commands)."""
    parser = Parser(
        prog="joulegate", description="Energy-metering proxy for OpenAI-compatible LLM servers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``joulegate`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # here, so a reader that left is noticed below, not at exit
        return code
    except JoulegateError as exc:
        print(f"joulegate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (``| head``): stop quietly. What is still buffered goes to
        # /dev/null, or flushing it at exit would raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
