"""Where a pipeline's files live: one home directory holds artifacts, staging, logs,
the metadata store and the serving directory. Only this module builds those paths."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO_ROOT / ".pipewright"


@dataclass(frozen=True)
class Home:
    root: str

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> "Home":
        """`--home`, else $PIPEWRIGHT_HOME, else `.pipewright/` in the repo (git-ignored)."""
        root = home or os.environ.get("PIPEWRIGHT_HOME") or DEFAULT_HOME
        root = os.path.abspath(os.path.expanduser(str(root)))
        os.makedirs(root, exist_ok=True)
        return cls(root)

    @property
    def metadata_uri(self) -> str:
        """$PIPEWRIGHT_METADATA (e.g. mysql://user:pw@host/db), else a SQLite file here."""
        return os.environ.get("PIPEWRIGHT_METADATA") or os.path.join(self.root, "metadata.sqlite")

    @property
    def serving_dir(self) -> str:
        return os.environ.get("PIPEWRIGHT_SERVING_DIR") or os.path.join(self.root, "serving")

    def artifact_dir(self, pipeline: str, component_id: str, key: str, execution_id: int) -> str:
        return os.path.join(self.root, "artifacts", pipeline, component_id, key, str(execution_id))

    def staging_dir(self, execution_id: int) -> str:
        return os.path.join(self.root, "staging", str(execution_id))

    def log_path(self, pipeline: str, run_id: str, component_id: str) -> str:
        return os.path.join(self.root, "logs", pipeline, run_id, f"{component_id}.log")

    @property
    def landing_dir(self) -> str:
        """Where `pipewright land` leaves `<pipeline>.ready` for the new-data asset watcher."""
        return os.path.join(self.root, "landing")

    def data_dir(self, pipeline: str) -> str:
        return os.path.join(self.root, "data", pipeline)
