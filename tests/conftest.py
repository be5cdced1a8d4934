"""Shared, session-scoped fixtures. Training is the expensive part of many tests, so ONE
penguin model is trained (by the real penguin pipeline) for the whole session; tests
read it and must not change its home. A test that needs to run more of the pipeline
(new models, rollbacks) uses a home of its own."""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFT and TFMA need Keras 2
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Test files that must run on one known pytest-xdist worker: test_services.py's system is
# started, and its night 1 triggered, at that worker's session start (tests/airflow/
# conftest.py); any other worker doing so ran the whole system and a penguin DAG run for
# nothing, on a 2-core machine the suite shares.
PINNED_FILES = {"tests/airflow/test_services.py": "gw0"}


def pinned_worker(path: str) -> str | None:
    """The xdist worker id `path` (relative to the repo) runs on, or None: any."""
    return PINNED_FILES.get(path)


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` (make test) with PINNED_FILES kept to their worker: a worker takes
    the first file in the queue not pinned to another worker, and stops when only such
    files are left. A pinned worker that does not exist (fewer workers, or it was
    replaced after a crash) pins nothing."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class PinnedFileScheduling(LoadFileScheduling):
        def _assign_work_unit(self, node) -> None:
            workers = {n.gateway.id for n in self.nodes}
            mine = [scope for scope in self.workqueue
                    if PINNED_FILES.get(scope) in (None, node.gateway.id)
                    or PINNED_FILES[scope] not in workers]
            if not mine:
                node.shutdown()  # what is left is pinned to other workers
                return
            work_unit = self.workqueue.pop(mine[0])
            self.assigned_work.setdefault(node, {})[mine[0]] = work_unit
            collection = self.registered_collections[node]
            node.send_runtest_some([collection.index(nodeid)
                                    for nodeid, done in work_unit.items() if not done])

    return PinnedFileScheduling(config, log)


@dataclass(frozen=True)
class TrainedPenguin:
    """The outcome of one full penguin pipeline run in a fresh home."""

    home: str
    run: object  # pipelines.local_runner.RunResult
    model_name: str  # "penguin": the directory under the serving dir
    serving_base: str  # <home>/serving/penguin, the directory a model server polls
    version: int  # the version the Pusher gave the model
    model_dir: str  # <serving_base>/<version>: the pushed SavedModel
    eval_examples: str  # glob of the raw eval split (gzip TFRecord of tf.Example)
    labels: tuple[str, ...]  # species names, in the order of the model's `scores`


def run_penguin(home: str, **params):
    """Runs the real penguin pipeline in `home` with run parameters, quietly."""
    from pipelines import registry
    from pipelines.local_runner import run_pipeline

    return run_pipeline(registry.load("penguin"), home=home, params=params,
                        echo=lambda line: None)


@pytest.fixture(scope="session")
def trained_penguin(tmp_path_factory) -> TrainedPenguin:
    home = str(tmp_path_factory.mktemp("penguin-home"))
    os.environ.pop("PIPEWRIGHT_SERVING_DIR", None)
    run = run_penguin(home)
    assert run.ok, run.summary()
    pushed = run.steps["Pusher"].outputs["pushed_model"]
    assert pushed.pushed, run.summary()
    model_dir = os.path.join(pushed.pushed_destination, str(pushed.pushed_version))
    examples = run.steps["ExampleGen"].outputs["examples"]
    with open(os.path.join(model_dir, "assets", "species")) as fh:
        labels = tuple(line.strip() for line in fh if line.strip())
    return TrainedPenguin(home=home, run=run, model_name=pushed.model_name,
                          serving_base=pushed.pushed_destination,
                          version=pushed.pushed_version, model_dir=model_dir,
                          eval_examples=examples.file_pattern("eval"), labels=labels)


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    """A throwaway MariaDB server for the session (`pipelines.mariadb_server`): a user with
    a password, its database `mlmd` and any `mlmd_<suffix>` (one per test, created by ML
    Metadata itself). Debian's mariadb-server is installed with apt-get once when missing
    (about a minute). The tests are skipped — loudly, with a warning in the summary — only
    when installing is impossible here (not root, or no apt-get); a failed installation or
    a server that does not start fails them."""
    import shutil
    import warnings

    from pipelines import mariadb_server

    if mariadb_server.binaries() is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            reason = (f"MariaDB TESTS SKIPPED: {mariadb_server.BINARIES} are missing and "
                      f"`apt-get install {mariadb_server.APT_PACKAGE}` is impossible here "
                      f"(uid {os.geteuid()}, apt-get {shutil.which('apt-get')}); the MySQL "
                      f"metadata store is NOT tested")
            warnings.warn(reason, pytest.PytestWarning)
            pytest.skip(reason)
        seconds = mariadb_server.install()  # MariaDBUnavailable fails the tests
        print(f"\ninstalled {mariadb_server.APT_PACKAGE} in {seconds:.0f} s")
    server = mariadb_server.start(tmp_path_factory.mktemp("mariadb"))
    try:
        yield server
    finally:
        server.stop()
