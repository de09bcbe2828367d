"""A run in use by another camzoo process is refused; the lock of a dead holder is not stale; a
lock's file is removed on release and the lock stays exclusive; a finished run (resumed, sharded)
keeps no lock files and no SQLite ``-wal`` / ``-shm``."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from camzoo.results.run import RunLock, RunLockedError
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


# -- the lock file is removed on release, and the lock stays exclusive --------------------------
NAME = ".config.lock"  # the lock several processes wait for (wait=True)


def _refused(run_dir, name=NAME):
    """Whether a third RunLock (not waiting) is refused: someone holds the lock."""
    lock = RunLock(str(run_dir), name)
    try:
        lock.acquire()
    except RunLockedError:
        return True
    lock.release()
    return False


def test_release_removes_the_lock_file_and_the_lock_is_taken_again(tmp_path):
    for name in (".lock", NAME, ".lock.rank-1-of-2"):
        with RunLock(str(tmp_path), name, wait=name == NAME) as lock:
            assert os.path.isfile(lock.path) and _refused(tmp_path, name)
        assert not os.path.exists(lock.path)
        with RunLock(str(tmp_path), name):
            assert _refused(tmp_path, name)
    assert os.listdir(tmp_path) == []


def test_a_waiter_gets_an_exclusive_lock_when_the_holder_removes_the_file(tmp_path):
    """A holder releases (unlinking the file) while another process waits with wait=True: the
    waiter ends up holding the file at the path, and a third process cannot take it."""
    first = RunLock(str(tmp_path), NAME, wait=True).acquire()
    waiter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys
        from camzoo.results.run import RunLock
        print("waiting", flush=True)
        lock = RunLock({str(tmp_path)!r}, {NAME!r}, wait=True).acquire()
        print("locked", os.stat(lock.path).st_ino, flush=True)
        sys.stdin.read()  # hold it until the test closes stdin
        lock.release()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert waiter.stdout.readline().strip() == "waiting"
        time.sleep(1.0)  # the waiter polls the held lock
        first.release()
        word, ino = waiter.stdout.readline().split()
        assert word == "locked"
        assert os.stat(first.path).st_ino == int(ino)  # it holds the file the path names
        assert _refused(tmp_path)
    finally:
        waiter.stdin.close()
        assert waiter.wait(timeout=60) == 0
    assert not os.path.exists(first.path) and not _refused(tmp_path)


def test_a_lock_taken_at_the_moment_of_release_is_exclusive(tmp_path, monkeypatch):
    """The holder unlocks while another lock is taken at that very moment (run inside the
    holder's unlock, as a scheduler may): the file is unlinked while still locked, so the new
    holder locks the file the path names, and a third lock is refused. (Unlinking after the
    unlock would leave the new holder on a nameless inode, and the third would get a new file.)"""
    fcntl = pytest.importorskip("fcntl")
    real = fcntl.flock
    first = RunLock(str(tmp_path), NAME, wait=True).acquire()
    second = RunLock(str(tmp_path), NAME, wait=True)
    taken, done = threading.Event(), threading.Event()

    def hold():  # filelock's locks belong to their thread: acquire and release in one
        with second:
            taken.set()
            done.wait(60)

    holder = threading.Thread(target=hold)

    def flock(fd, op):
        real(fd, op)
        if op == fcntl.LOCK_UN and not holder.is_alive() and not taken.is_set():
            holder.start()  # the first holder's unlock, before its release returns
            assert taken.wait(30)

    monkeypatch.setattr(fcntl, "flock", flock)
    first.release()
    monkeypatch.setattr(fcntl, "flock", real)
    try:
        assert taken.is_set()
        assert os.path.isfile(second.path) and _refused(tmp_path)
    finally:
        done.set()
        holder.join(60)
    assert not os.path.exists(second.path) and not _refused(tmp_path)


def test_a_file_replaced_before_the_flock_is_not_held(tmp_path, monkeypatch):
    """The path names another file by the time the flock on the opened one succeeds (moved
    aside, a new one made): the lock is not taken on the old file but on the path's."""
    fcntl = pytest.importorskip("fcntl")
    real = fcntl.flock
    path, aside = tmp_path / NAME, tmp_path / "aside"
    path.write_text("")
    moved = []

    def flock(fd, op):
        if op & fcntl.LOCK_EX and not moved:  # between the open and the flock: replace the file
            moved.append(os.fstat(fd).st_ino)
            os.rename(path, aside)
            path.write_text("")
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    lock = RunLock(str(tmp_path), NAME).acquire()
    monkeypatch.setattr(fcntl, "flock", real)
    try:
        assert moved == [aside.stat().st_ino] and path.stat().st_ino != moved[0]
        assert _refused(tmp_path)  # it holds the file the path names
    finally:
        lock.release()
    assert not path.exists() and aside.exists()


# -- a finished run keeps no lock files and no SQLite -wal / -shm ---------------------------------
def _clutter(run_dir):
    """Lock files and SQLite side files in ``run_dir``."""
    return sorted(f for f in os.listdir(run_dir)
                  if f.startswith((".lock", ".config.lock")) or f.endswith(("-wal", "-shm", "-journal")))


def _tiny(out, **kw):
    from camzoo.bench import BenchConfig, run
    from tests.conftest import SAMPLES
    from tests.helpers import QUIET, TINY1000

    kw = {"metrics": "lcam", **kw}
    return run(BenchConfig(backbone=TINY1000, weights="random", methods="fakecam", data=SAMPLES, limit=4,
                           batch_size=2, out=str(out), **QUIET, **kw), echo=lambda s: None)


def test_a_finished_run_a_resume_and_their_reader_leave_no_lock_nor_wal_files(tmp_path):
    out = tmp_path / "run"
    with _tiny(out) as r:
        assert len(r.rows()) == 4 and _clutter(out) == []  # the reader neither
    assert _clutter(out) == []
    with _tiny(out, resume=True, metrics="+adcc") as r:  # the resume writes: a protocol added
        assert r.rows()["adcc"].notna().sum() == 4 and _clutter(out) == []
    assert _clutter(out) == []


def test_a_sharded_run_leaves_no_lock_nor_wal_files_after_the_merge(tmp_path):
    out = tmp_path / "run"
    _tiny(out, shard="0/2").close()
    assert _clutter(out) == []
    with _tiny(out, shard="1/2") as r:  # the last shard merges
        assert os.path.isfile(out / "rows.sqlite") and len(r.rows()) == 4
    assert _clutter(out) == []
