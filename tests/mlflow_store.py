"""A new, empty MLflow sqlite store in the time of a file copy.

MLflow makes a new sqlite store by running its schema migrations (the time: docs/performance.md,
"The test suite"), paid again by each of the ~140 tests (and each temporary dvc repository) that
start from an empty store. The migrated schema is the same each time, so it is made once per test
process and copied. Its Default experiment (id 0) is removed from the copy's source: MLflow
makes it again when a store lacking it is opened (``SqlAlchemyStore._initialize_store_state``),
with the artifact location of whoever opens it, as it does for a store it creates. A copy made
under another MLflow version is refused by MLflow itself (``_verify_schema``), not used.
"""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import tempfile
from functools import cache
from pathlib import Path


@cache
def _template() -> Path:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(tempfile.mkdtemp(prefix="hsnet-mlflow-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    db = folder / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{db}", (folder / "artifacts").as_uri()).engine.dispose()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM experiments").fetchone() == (1,)  # Default alone
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        conn.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
        conn.execute("DELETE FROM experiments WHERE experiment_id = 0")
    conn.close()
    return db


def seed_store(db: Path) -> Path:
    """An empty, migrated MLflow store at ``db`` (which must not exist yet)."""
    if db.exists():
        raise FileExistsError(db)
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template(), db)
    return db
