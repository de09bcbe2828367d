"""What every ``camzoo`` command shares: option parsing and turning user errors into messages."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional, Sequence

import click
from click.core import ParameterSource

from ..utils import UserError, parse_dotted, split_names

#: exceptions that are the user's (bad names, options, files): shown as one message, no traceback
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotImplementedError,
               UserError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Re-raise user errors (:data:`USER_ERRORS`) as ``click.ClickException`` (message, exit 1)."""
    try:
        yield
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None


def method_options(opts: Sequence[str], param: str = "--opt", what: str = "METHOD",
                   lists: bool = False) -> Dict[str, Dict[str, Any]]:
    """``METHOD.OPTION=VALUE`` strings -> nested dict (:func:`camzoo.utils.parse_dotted`); a
    malformed string is a usage error naming the option."""
    try:
        return parse_dotted(opts, what, lists=lists)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None


def names(s: Optional[str]) -> list:
    """Comma-separated names -> list."""
    return split_names(s)


def given(ctx: click.Context) -> Dict[str, Any]:
    """The parameters the user gave on the command line (not click's defaults)."""
    return {k: v for k, v in ctx.params.items()
            if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}


def ci_options(f):
    """``--no-ci``, ``--resamples N`` and ``--ci-seed S`` of the commands that print tables
    (defaults: those of :mod:`camzoo.results.bootstrap`, 10000 resamples, seed 0; see
    :func:`ci_kwargs`)."""
    f = click.option("--ci-seed", default=None, type=int,
                     help="seed of the bootstrap resamples [default: 0]")(f)
    f = click.option("--resamples", default=None, type=click.IntRange(min=2),
                     help="bootstrap resamples of the intervals [default: 10000]")(f)
    return click.option("--no-ci", is_flag=True, help="no confidence intervals in the table")(f)


def ci_kwargs(no_ci: bool, resamples: Optional[int], ci_seed: Optional[int]) -> Dict[str, Any]:
    """The :func:`camzoo.results.tables.summary` keywords of :func:`ci_options`' values (the
    ones not given keep summary's defaults)."""
    out: Dict[str, Any] = {"ci": not no_ci}
    if resamples is not None:
        out["n_resamples"] = resamples
    if ci_seed is not None:
        out["seed"] = ci_seed
    return out


def emit(text: str, output: Optional[str]) -> None:
    """Write ``text`` to ``output`` (a file) or stdout."""
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        click.echo(text, nl=False)
