"""A damaged ``config.json`` (invalid JSON, not an object, a key missing or of the wrong type):
every command that reads a run says so in one line naming the file, what is wrong and what to
do, exit status 1, no traceback; ``camzoo bench --resume`` writes nothing."""
import dataclasses
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from camzoo.cli import main
from camzoo.results.run import BENCH_INT_FIELDS, DamagedConfigError, Run, load_run_config
from tests.conftest import SAMPLES


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("damaged") / "run")
    res = CliRunner().invoke(main, [
        "bench", "--backbone", "py:tests.helpers:tiny1000", "--weights", "random", "--data", SAMPLES,
        "--limit", "2", "--methods", "fakecam", "--metrics", "lcam", "--out", out, "--no-progress",
        "--no-figures"])
    assert res.exit_code == 0, res.output
    return out


def _without(key):
    def damage(cfg):
        del cfg[key]
        return json.dumps(cfg)
    return damage


def _with(path, value):
    def damage(cfg):
        *parents, key = path.split(".")
        obj = cfg
        for p in parents:
            obj = obj[p]
        obj[key] = value
        return json.dumps(cfg)
    return damage


#: (name, config.json's text from the stored config, what the message says is wrong)
DAMAGES = [
    ("invalid-json", lambda cfg: json.dumps(cfg)[:-40], "invalid JSON at line 1"),
    ("a-list", lambda cfg: "[1,2,3]", "not a JSON object (it holds a list)"),
    ("no-bench-config", _without("bench_config"), "missing key 'bench_config'"),
    ("no-protocols", _without("protocols"), "missing key 'protocols'"),
    # read with int() by the resume and the merge: "invalid literal for int()" before
    ("world-size-text", _with("world_size", "two"), 'world_size should be a whole number, not "two"'),
    ("limit-text", _with("bench_config.limit", "four"), 'bench_config.limit should be a whole number or null'),
    ("protocol-not-object", _with("protocols.lcam", 3), "protocols.lcam should be an object, not 3"),
]
COMMANDS = [
    ["bench", "--resume", "--no-progress", "--out"],
    ["table"],
    ["merge"],
    ["errors"],
    ["stats"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("name,damage,what", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_a_damaged_config_json_gives_one_message_naming_the_file(finished_run, tmp_path, command, name,
                                                                  damage, what):
    run = str(tmp_path / "run")
    shutil.copytree(finished_run, run)
    path = os.path.join(run, "config.json")
    text = damage(json.loads(open(path).read()))
    open(path, "w").write(text)
    rows = open(os.path.join(run, "rows.sqlite"), "rb").read()
    res = CliRunner().invoke(main, [*command, run])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit)  # no exception escaped the command
    assert "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert lines == [f"Error: {path} is damaged: {lines[0].split(': ', 2)[2]}"], res.output
    assert what in lines[0], lines[0]
    assert lines[0].endswith("restore it from a backup, or start a new run with another --out")
    # nothing was written
    assert open(path).read() == text
    assert open(os.path.join(run, "rows.sqlite"), "rb").read() == rows


def test_the_loader_is_a_value_error_and_checks_what_is_there(finished_run, tmp_path):
    cfg = load_run_config(finished_run)
    assert {"backbone", "methods", "protocols", "bench_config"} <= set(cfg)
    with Run(finished_run) as r:
        assert r.config == cfg
    run = str(tmp_path / "run")
    shutil.copytree(finished_run, run)
    open(os.path.join(run, "config.json"), "w").write('{\n  "protocols": }')
    with pytest.raises(ValueError, match=r"config.json is damaged: invalid JSON at line 2, column 16"):
        Run(run)
    # a reader that needs fewer keys gets what is there, still checked
    open(os.path.join(run, "config.json"), "w").write(json.dumps({"protocols": {"lcam": {"options": {}}}}))
    assert load_run_config(run, require=("protocols",)) == {"protocols": {"lcam": {"options": {}}}}
    with pytest.raises(DamagedConfigError, match="missing key 'backbone'"):
        load_run_config(run)
    open(os.path.join(run, "config.json"), "w").write(json.dumps({"protocols": {"lcam": {}}}))
    with pytest.raises(DamagedConfigError, match="missing key 'protocols.lcam.options'"):
        load_run_config(run, require=("protocols",))
    open(os.path.join(run, "config.json"), "w").write(json.dumps({"protocols": {}, "world_size": 0}))
    with pytest.raises(DamagedConfigError, match="world_size should be a whole number >= 1, not 0"):
        load_run_config(run, require=())


def test_bench_int_fields_are_the_integer_options_of_bench_config():
    from camzoo.engine.config import BenchConfig

    ints = {f.name for f in dataclasses.fields(BenchConfig) if f.metadata["kind"] is int}
    assert ints <= set(BENCH_INT_FIELDS), ints - set(BENCH_INT_FIELDS)
