"""The ``camzoo`` command line: a thin layer over the Python API, one module per command.

``camzoo list | explain | bench | merge | table | compare | errors | train lcam | train lficam |
stability | stats | sanity | analyze | report``
"""
from __future__ import annotations

import click

from .analyze import analyze_cmd
from .bench import bench_cmd, compare_cmd, errors_cmd, merge_cmd, table_cmd
from .explain import explain_cmd
from .list import list_cmd
from .report import report_cmd
from .sanity import sanity_cmd
from .stability import stability_cmd
from .stats import stats_cmd
from .train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="camzoo")
def main() -> None:
    """camzoo: benchmark CAM-style explainers of CNN image classifiers."""


for _cmd in (list_cmd, explain_cmd, bench_cmd, merge_cmd, table_cmd, compare_cmd, errors_cmd, train,
             stability_cmd, stats_cmd, sanity_cmd, analyze_cmd, report_cmd):
    main.add_command(_cmd)

if __name__ == "__main__":  # pragma: no cover
    main()
