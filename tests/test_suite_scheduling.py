"""`make test`'s pytest-xdist scheduling (tests/conftest.py): a pinned test file runs on its
worker only, whichever file it is and wherever it is in the queue, and the session ends."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
PROBE_CONFTEST = f'''
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("suite_conftest", {str(CONFTEST)!r})
suite = importlib.util.module_from_spec(spec)
sys.modules["suite_conftest"] = suite
spec.loader.exec_module(suite)
suite.PINNED_FILES.clear()
suite.PINNED_FILES[os.environ["PIN_FILE"]] = os.environ["PIN_TO"]
pytest_xdist_make_scheduler = suite.pytest_xdist_make_scheduler
'''
PROBE_TEST = '''
import os, time
def test_records_its_worker():
    time.sleep(0.2)
    with open(os.environ["RAN_ON"], "a") as fh:
        fh.write(f"{__name__.split('.')[-1]} {os.environ['PYTEST_XDIST_WORKER']}\\n")
def test_second():
    time.sleep(0.2)
'''


def ran_on(tmp_path: Path, pinned: str, worker: str) -> dict[str, str]:
    project = tmp_path / f"{pinned}-{worker}"
    (project / "tests").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "tests" / "conftest.py").write_text(PROBE_CONFTEST)
    for name in "abcdef":
        (project / "tests" / f"test_{name}.py").write_text(PROBE_TEST)
    out = project / "ran_on.txt"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "loadfile", "--no-loadscope-reorder", "tests"],
        cwd=project, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PIN_FILE": f"tests/test_{pinned}.py",
             "PIN_TO": worker, "RAN_ON": str(out)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return dict(line.split() for line in out.read_text().splitlines())


def test_a_pinned_file_runs_on_its_worker_wherever_it_is_in_the_queue(tmp_path):
    first_on_second_worker = ran_on(tmp_path, "a", "gw1")
    assert first_on_second_worker["test_a"] == "gw1"
    assert set(first_on_second_worker.values()) == {"gw0", "gw1"}
    assert ran_on(tmp_path, "f", "gw0")["test_f"] == "gw0"  # the last file: no hang
    assert len(ran_on(tmp_path, "c", "gw7")) == 6  # no such worker: pins nothing
