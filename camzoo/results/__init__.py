"""What a run leaves behind and everything computed from it: the per-image result store
(:mod:`.store`), the :class:`Run` reader of a run directory (:mod:`.run`), paper-style
tables (:mod:`.tables`) and figures (:mod:`.plots`)."""
from .run import CONFIG_NAME, MANIFEST_NAME, TIMINGS_NAME, Run, RunLock, RunLockedError, map_path
from .store import DB_NAME, ResultStore

__all__ = ["CONFIG_NAME", "MANIFEST_NAME", "TIMINGS_NAME", "DB_NAME", "Run", "RunLock", "RunLockedError", "map_path", "ResultStore"]
