"""The fork server party processes start from (`mpc/forking.py`): a launching script's main
module runs once in the server, not once per party, and roles defined in it still work."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import os
    from pathlib import Path

    with Path(os.environ["RUNS_LOG"]).open("a") as log:
        log.write(__name__ + "\\n")


    def role(runtime):
        return runtime.party_id * 10


    if __name__ == "__main__":
        from mpc.launch import run_processes
        from mpc.runtime import RunConfig

        for _ in range(2):
            assert run_processes([role] * 3, RunConfig(n_parties=3, timeout=20)) == [0, 10, 20]
""")


def test_the_launching_script_runs_once_in_the_server_and_its_roles_work(tmp_path):
    script, log = tmp_path / "launch_twice.py", tmp_path / "runs.log"
    script.write_text(SCRIPT)
    env = {**os.environ, "RUNS_LOG": str(log),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # the script itself, then the server once; six party processes would add six lines
    assert log.read_text().split() == ["__main__", "__mp_main__"]
