"""One module per `glmtui` subcommand.

Each module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a
callable taking the parsed arguments and returning an exit code. The commands only parse
arguments and present results; the work itself is done by glmcore.
"""

COMMAND_MODULES = (
    "train",
    "sweep",
    "queue",
    "runs",
    "compare",
    "stop",
    "resume",
    "logs",
    "export",
    "eval",
    "chat",
    "serve",
    "models",
    "download",
    "convert",
    "verify",
    "bench",
    "gpus",
    "demo",
)
