"""The output directory of omoe-prepare-data: the permissions of any new folder (not the 0700
of a private temporary folder), and partial folders of a killed run removed at the next run for
the same output (a running one's kept)."""

import os
import subprocess
import sys

import pytest

from omoe_plugin.data.output import building, partial_name


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_output_directory_honours_the_umask(tmp_path, umask_022):
    out = tmp_path / "bin"
    with building(out) as work:
        (work / "raw").mkdir()
    assert out.stat().st_mode & 0o777 == 0o755
    with building(out) as work:  # replacing an existing one
        (work / "raw").mkdir()
    assert out.stat().st_mode & 0o777 == 0o755


def gone_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_partial_folders_of_a_killed_run_are_removed_at_the_next_run(tmp_path):
    out = tmp_path / "bin"
    killed = tmp_path / partial_name(out, gone_pid())
    left_old = tmp_path / (partial_name(out, gone_pid()) + "-old")
    older = tmp_path / ".bin.partial-k2x_9qab"  # as versions before the pid was in the name
    running = tmp_path / partial_name(out, os.getpid())  # another run, still at work
    other = tmp_path / partial_name(tmp_path / "other", gone_pid())  # another output's
    for folder in (killed, left_old, older, running, other):
        (folder / "raw").mkdir(parents=True)
    with building(out) as work:
        (work / "raw").mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["bin", running.name, other.name])


def test_a_failed_build_leaves_nothing(tmp_path):
    out = tmp_path / "bin"
    with pytest.raises(ValueError), building(out) as work:
        (work / "raw").mkdir()
        raise ValueError("stop")
    assert list(tmp_path.iterdir()) == []
