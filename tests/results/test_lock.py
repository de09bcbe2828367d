"""A run in use by another camzoo process is refused; the lock of a dead holder is not stale."""
import os
import signal
import subprocess
import sys
import textwrap

from camzoo.results.run import RunLock
from tests.conftest import REPO
from tests.helpers import bench_cli as _bench


def test_a_locked_run_is_refused_and_a_dead_holders_lock_is_not_stale(tmp_path):
    out = tmp_path / "run"
    assert _bench("--methods", "fakecam", "--metrics", "lcam", "--limit", "2", "--out", str(out)).exit_code == 0
    with RunLock(str(out)):
        res = _bench("--resume", "--out", str(out))
    assert res.exit_code == 1 and "is in use by another camzoo process (it holds" in res.output, res.output
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from camzoo.results.run import RunLock
        lock = RunLock({str(out)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO})
    assert holder.stdout.readline().strip() == "locked"
    assert _bench("--resume", "--out", str(out)).exit_code == 1
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    res = _bench("--resume", "--out", str(out))
    assert res.exit_code == 0, res.output
