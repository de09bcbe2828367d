"""One declaration per option: every BenchConfig field is a `camzoo bench` option (and vice versa),
the docs' option table is made from the declarations, and every field declared part of the run
identity is refused when a resume changes it (tests/engine/test_resume.py covers each key)."""
import dataclasses
import os
import re

from camzoo.cli import main
from camzoo.engine.config import BenchConfig, cli_flag, options_table, route_shorthands
from camzoo.metrics.protocol import shorthand_flags
from tests.conftest import REPO


def test_every_field_is_a_bench_option_and_every_option_a_field():
    fields = {f.name: f for f in dataclasses.fields(BenchConfig)}
    params = {p.name: p for p in main.commands["bench"].params}
    shorthands = shorthand_flags()
    assert set(params) == set(fields) | set(shorthands)
    for name, f in fields.items():
        assert cli_flag(f) in params[name].opts or f"--{name.replace('_', '-')}" in params[name].opts
        assert f.metadata["help"] and params[name].help == f.metadata["help"]
        if f.metadata["choices"]:
            assert list(params[name].type.choices) == list(f.metadata["choices"])


def test_a_protocol_shorthand_is_declared_by_its_protocol_and_sets_its_option():
    """``--steps`` is the rise protocol's (its ``shorthands``), not a config field: it becomes
    ``metric_options["rise"]["steps"]``, on the command line and in a stored run's config."""
    flags = shorthand_flags()
    assert flags == {"steps": ("rise", int, flags["steps"][2]), "boxes": ("localization", str, flags["boxes"][2])}
    assert not {"steps", "boxes"} & {f.name for f in dataclasses.fields(BenchConfig)}
    cfg = BenchConfig.from_cli({"steps": 8, "metric_options": ("lcam.nus=1",)})
    assert cfg.metric_options == {"lcam": {"nus": 1}, "rise": {"steps": 8}}
    assert route_shorthands({"steps": 8, "metric_options": {"rise": {"steps": 4}}})["metric_options"] == \
        {"rise": {"steps": 4}}  # an explicit --metric-opt wins
    assert route_shorthands({"steps": None, "limit": 2}) == {"limit": 2}


def test_every_option_of_every_command_has_help():
    def walk(cmd):
        for sub in getattr(cmd, "commands", {}).values():
            yield from walk(sub)
        yield cmd

    missing = [f"{c.name} {p.opts[0]}" for c in walk(main) for p in c.params
               if p.param_type_name == "option" and not p.help]
    assert not missing, missing


def test_the_docs_option_table_is_the_declarations():
    text = open(os.path.join(REPO, "docs", "bench.md")).read()
    m = re.search(r"<!-- options-table: begin -->\n(.*?)<!-- options-table: end -->", text, re.S)
    assert m and m.group(1) == options_table(), (
        "docs/bench.md's option table is out of date: paste camzoo.engine.config.options_table()")


def test_preset_choices_are_the_presets():
    from camzoo.engine.config import PRESETS

    f = {f.name: f for f in dataclasses.fields(BenchConfig)}["preset"]
    assert list(f.metadata["choices"]) == list(PRESETS)


def test_every_identity_field_is_covered_by_the_resume_test():
    from tests.engine.test_resume import IDENTITY_CHANGES

    declared = {f.name for f in dataclasses.fields(BenchConfig) if f.metadata["identity"]}
    covered = {k for change, _ in IDENTITY_CHANGES for k in change}
    assert declared == covered, f"declared but not tested: {declared - covered}; tested but not declared: " \
                                f"{covered - declared}"
