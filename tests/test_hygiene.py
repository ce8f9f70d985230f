"""The test run keeps out of the user's home, and NNI's web portal stays on loopback.

NNI 3.0 writes its experiment list to ``~/nni-experiments/.experiment`` (from Python and
from its Node manager) whatever ``experiment_working_directory`` says, and its manager
calls ``app.listen(port)`` with no host, so the portal listens on every interface. The
conftest gives the run a temporary HOME and preloads examples/nni_experiment/loopback.cjs
into Node; these tests check that both took effect. ``pytest --noconftest`` shows them
failing without it.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pwd = pytest.importorskip("pwd")  # the account's home, whatever HOME says (POSIX)
needs_nni = pytest.mark.skipif(importlib.util.find_spec("nni") is None, reason="needs NNI")
LOOPBACK_HEX = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
LISTEN_STATE = "0A"
SERVER_ADDRESS = (
    "const s = require('http').createServer().listen(0, () => "
    "{ console.log(s.address().address); s.close(); });"
)


def account_home() -> Path:
    """The home of the account running the tests, whatever HOME says."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir).resolve()


def is_within(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def node() -> Path:
    import nni_node

    return Path(nni_node.__path__[0]) / "node"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as the kernel writes them) with a TCP listener on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == LISTEN_STATE and int(hex_port, 16) == port:
                found.append(address)
    return found


def test_the_run_has_a_temporary_home() -> None:
    home = Path.home()
    assert not is_within(home, account_home())
    assert is_within(home, Path(tempfile.gettempdir()))
    assert Path(os.path.expanduser("~/nni-experiments")).parent == home


@needs_nni
def test_nnis_experiment_list_goes_to_the_temporary_home() -> None:
    from nni.tools.nnictl.config_utils import Experiments
    from nni.tools.nnictl.constants import NNI_HOME_DIR

    assert not is_within(Path(NNI_HOME_DIR), account_home())  # checked before any write
    experiments = Experiments()
    assert Path(experiments.experiment_file) == Path.home() / "nni-experiments" / ".experiment"
    experiments.add_experiment("labelkeep-hygiene", 0, 0, "local", None)
    try:
        assert "labelkeep-hygiene" in Experiments().get_all_experiments()
    finally:
        experiments.remove_experiment("labelkeep-hygiene")


@needs_nni
def test_nnis_manager_sees_the_temporary_home_and_binds_loopback() -> None:
    """What Node (NNI's manager) gets: the same HOME, and loopback for a server without host."""
    script = f"console.log(require('os').homedir()); {SERVER_ADDRESS}"
    result = subprocess.run(
        [str(node()), "-e", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == [str(Path.home()), "127.0.0.1"]
    plain = {key: value for key, value in os.environ.items() if key != "NODE_OPTIONS"}
    result = subprocess.run(
        [str(node()), "-e", SERVER_ADDRESS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=plain,
    )
    assert result.stdout.strip() in ("::", "0.0.0.0")  # NNI's default: every interface


@needs_nni
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")
def test_a_real_nni_portal_listens_on_loopback_only(tmp_path: Path) -> None:
    from nni.experiment import Experiment

    experiment = Experiment("local")
    config = experiment.config
    config.trial_command = "true"
    config.trial_code_directory = str(tmp_path)
    config.search_space = {"x": {"_type": "uniform", "_value": [0.0, 1.0]}}
    config.tuner.name = "Random"
    config.max_trial_number = 1
    config.trial_concurrency = 1
    config.experiment_working_directory = str(tmp_path / "nni-experiments")
    port = free_port()
    experiment.start(port)
    try:
        addresses = listening_addresses(port)
        registry = (Path.home() / "nni-experiments" / ".experiment").read_text()
    finally:
        experiment.stop()
        time.sleep(0.5)  # let the manager's process go before the next test
    assert addresses == [LOOPBACK_HEX]
    assert experiment.id in registry
