"""Where an architecture's Optuna study lives, and how it is opened again (by a resumed search and the report)."""
from __future__ import annotations

from pathlib import Path

import optuna


def study_name(experiment: str, arch: str) -> str:
    """The Optuna study of ``arch``'s search in ``experiment``; stored in the plan and the manifest, read back there."""
    return f"{experiment}-{arch}"


def study_storage_file(folder: Path) -> Path:
    """Where an architecture's study lives: SQLite ``optuna.db`` where SQLAlchemy is installed, else a journal file
    ``optuna.journal`` (optuna-dashboard opens both). An existing journal is kept using."""
    journal = folder / "optuna.journal"
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        return journal
    return journal if journal.exists() and not (folder / "optuna.db").exists() else folder / "optuna.db"


def open_storage(path: str | Path) -> optuna.storages.BaseStorage:
    """Open a study file written by ``study_storage_file``'s choice."""
    path = Path(path)
    if path.suffix == ".journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(f"sqlite:///{path}")
