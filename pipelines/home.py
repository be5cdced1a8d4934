"""Where a pipeline's files live: one home directory holds artifacts, staging, logs,
the metadata store and the serving directory. Only this module builds those paths.

The home is a POSIX path. Every process that runs steps of a pipeline (the local runner,
each Airflow worker) must see the same directory at the same path: a shared mount (NFS,
a cluster filesystem, a volume mounted into every container) — artifact URIs recorded in
ML Metadata are these paths. Object stores (gs://, s3://) are not supported: every reader
and writer uses local file operations. Setting a home up (`pipewright run`, `make up`,
`make up-cluster`) writes its identity marker MARKER, a random id; an Airflow task checks
the home with `Home.check_shared` before it touches anything, so a worker that does not
see the home fails instead of quietly making a fresh one.
"""
from __future__ import annotations

import os
import secrets
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO_ROOT / ".pipewright"
MARKER = ".pipewright-home"
# Set by `make up`/`make up-cluster` for every Airflow process (pipelines/services.py):
# the identity the tasks expect in the home's MARKER.
HOME_ID_ENV = "PIPEWRIGHT_HOME_ID"


class HomeUnavailable(RuntimeError):
    """The home is not the set-up, shared one this process expects (Home.check_shared)."""


@dataclass(frozen=True)
class Home:
    root: str

    @classmethod
    def locate(cls, home: str | os.PathLike | None = None) -> "Home":
        """`--home`, else $PIPEWRIGHT_HOME, else `.pipewright/` in the repo (git-ignored),
        as an absolute path; creates nothing."""
        root = home or os.environ.get("PIPEWRIGHT_HOME") or DEFAULT_HOME
        return cls(os.path.abspath(os.path.expanduser(str(root))))

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> "Home":
        """The home as `locate` finds it, set up: the directory created if missing and its
        identity MARKER written if missing."""
        found = cls.locate(home)
        os.makedirs(found.root, exist_ok=True)
        found._write_marker()
        return found

    @classmethod
    def check_shared(cls, home: str | os.PathLike | None = None,
                     expected_id: str | None = None) -> "Home":
        """The home as `locate` finds it, if this process sees the set-up home: the
        directory exists, holds MARKER, is writable, and (when `expected_id` is given) the
        marker holds that id. Creates nothing (a probe file is written and removed).
        Raises HomeUnavailable naming the path, this host and what to do."""
        found = cls.locate(home)
        marker = os.path.join(found.root, MARKER)
        if not os.path.isdir(found.root):
            problem = "does not exist"
        elif not os.path.isfile(marker):
            problem = f"has no {MARKER} (it was never set up, or is not the shared home)"
        elif expected_id and found.identity != expected_id:
            problem = (f"is a different home: its {MARKER} holds {found.identity!r}, the "
                       f"pipeline's home holds {expected_id!r} (${HOME_ID_ENV})")
        else:
            problem = _not_writable(found.root)
        if problem:
            raise HomeUnavailable(
                f"the pipeline home {found.root} {problem} on host {socket.gethostname()}; "
                f"nothing was written. Mount the same POSIX path at {found.root} on every "
                f"worker (a shared filesystem), or set PIPEWRIGHT_HOME to where it is mounted")
        return found

    @property
    def identity(self) -> str | None:
        """The id in MARKER, None when there is none."""
        try:
            with open(os.path.join(self.root, MARKER), encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError:
            return None

    def _write_marker(self) -> None:
        """Writes MARKER with a new random id unless it exists (O_EXCL: two processes
        setting up one home at once keep the first id)."""
        try:
            fd = os.open(os.path.join(self.root, MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o644)
        except FileExistsError:
            return
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_hex(16) + "\n")

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

    def execution_dirs(self, pipeline: str, component_id: str, execution_id: int) -> list[str]:
        """Every directory an execution may have written: its staging directory and, for
        each output key the component has published under, its artifact_dir."""
        component_dir = os.path.join(self.root, "artifacts", pipeline, component_id)
        keys = sorted(os.listdir(component_dir)) if os.path.isdir(component_dir) else []
        return [self.staging_dir(execution_id),
                *(self.artifact_dir(pipeline, component_id, key, execution_id) for key in keys)]

    def log_path(self, pipeline: str, run_id: str, component_id: str) -> str:
        return os.path.join(self.root, "logs", pipeline, run_id, f"{component_id}.log")

    @property
    def landing_dir(self) -> str:
        """Where `pipewright land` leaves `<pipeline>.ready` for the new-data asset watcher."""
        return os.path.join(self.root, "landing")

    def data_dir(self, pipeline: str) -> str:
        return os.path.join(self.root, "data", pipeline)


def _not_writable(root: str) -> str:
    """"" when a file can be created in `root`, else why not."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=root)
    except OSError as exc:
        return f"is not writable by this process ({exc.strerror})"
    os.close(fd)
    os.remove(probe)
    return ""
