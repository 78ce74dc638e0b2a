"""The `advml` Typer app and what every command shares: errors as one line and exit code 2, registry listings,
flags as nested settings, the metrics printout."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import typer

from advml.errors import AdvmlError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="advml: backdoor attacks and defenses, transferable adversarial examples.")


_RESUME = {"backdoor": "rerun the same command with --resume to continue from the last checkpoint",
           "detect": "rerun the same command with --resume to continue from the last checkpoint",
           "bench": "rerun the same command to continue (finished cells are kept, a cut one resumes)",
           "zoo_train": "rerun the same command to continue (a zoo model resumes from its checkpoint)",
           "transfer": "a transfer run does not resume: rerun it with --overwrite"}


def errors(fn: Callable[..., None]) -> Callable[..., None]:
    """advml errors become one line on stderr and exit code 2, never a traceback; Ctrl-C says how to go on."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except AdvmlError as e:
            typer.echo("advml: error: " + str(e).replace("\n", " "), err=True)  # one line, whatever the text
            raise typer.Exit(2) from None
        except MemoryError:  # the last net: inputs are bounded before allocation, settings may still ask too much
            typer.echo("advml: error: out of memory; use smaller data, batches or models", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("advml: interrupted; " + _RESUME.get(fn.__name__, "nothing was finished"), err=True)
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        from advml import __version__

        typer.echo(f"advml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print advml's version and exit")] = False) -> None:
    """advml: backdoor attacks and defenses, transferable adversarial examples."""


def print_registry(rows: list[tuple[str, str]]) -> None:
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        typer.echo(f"{name:<{width}}  {desc}")


def flag_settings(**flags: Any) -> dict[str, Any]:
    """The settings given on the command line, nested like the YAML config."""
    from advml.config import deep_merge, nest, parse_assignments

    given = nest({k: v for k, v in flags.items() if v is not None and k != "sets"})
    return deep_merge(given, parse_assignments(flags.get("sets") or []))


def print_metrics(m: dict[str, Any]) -> None:
    fmt = {"clean_acc_before": "{:.3f}", "asr_before": "{:.3f}", "clean_acc": "{:.3f}", "asr": "{:.3f}",
           "psnr": "{:.2f} dB", "linf": "{:.1f}", "ssim": "{:.4f}", "detect_precision": "{:.3f}",
           "detect_recall": "{:.3f}", "clean_split_poison_rate": "{:.4f}"}
    for key, f in fmt.items():
        if key in m:
            value = m[key]
            typer.echo(f"{key:<24} {f.format(value) if value is not None else 'n/a'}")
