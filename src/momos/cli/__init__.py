"""The ``momos`` command line: one module per sub-command, each with ``register(subparsers)``.

A sub-command's handler returns an exit code. Bad input becomes a one-line message and exit
code 2, with nothing written, here and only here: a :class:`UsageError` from the command line
itself, or the ``ValueError`` / ``TypeError`` with which the library refuses bad values (its
convention: every check raises one of them naming the problem).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order ``momos --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = ("project", "compress", "train", "sweep", "compare", "plot", "complexity", "export", "inspect")


# Optional modules and the extra that installs each (pyproject.toml): a job that needs a
# missing one says which extra to install instead of failing with a traceback.
EXTRAS = {"torchvision": "train", "sklearn": "train", "tqdm": "train", "yaml": "train",
          "pybdm": "complexity", "zstandard": "complexity", "matplotlib": "plot", "timm": "timm",
          "lightning": "lightning", "transformers": "transformers", "accelerate": "transformers",
          "tensorboard": "tensorboard", "onnx": "onnx"}


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit code 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """Reports a parse error in one line (no usage dump), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from momos import __version__

    parser = OneLineErrorParser(
        prog="momos", description="Mosaic-of-Motifs: train, measure and ship mosaic networks.")
    parser.add_argument("--version", action="version", version=f"momos {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                       parser_class=OneLineErrorParser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"momos.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()   # now, so that a closed pipe shows up here and not at exit
        return code
    except (UsageError, ValueError, TypeError) as error:
        print(f"momos {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _stdout_closed()
    except ModuleNotFoundError as error:
        top = (error.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        print(f"momos {args.command}: error: this needs {top}, which is not installed: "
              f"pip install 'momos[{EXTRAS[top]}]'", file=sys.stderr)
        return 2


def _stdout_closed() -> int:
    """The reader of stdout went away (``momos export ... | head -1``): stop quietly.

    Python's recipe: point stdout at devnull, so that flushing it at exit raises no second
    BrokenPipeError and no traceback; exit code 1, as for any output that could not be written.
    """
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


if __name__ == "__main__":
    sys.exit(main())
