"""A stand-in for torchrun in fast tests of the supervisor: replays a launch's files from a script.

``python tests/launch_replay.py SCRIPT.json``. The script is a list of actions, done in order:

* ``{"spawn": NAME, "ignore_sigterm": BOOL}``: start a process (``sleep``) that stands for a launcher or a
  measuring process; it inherits this process's environment, run token included, so memprobe finds and
  stops it as a real one (one that ignores SIGTERM only ends with SIGKILL);
* ``{"append": PATH, "text": TEXT}``: append ``TEXT`` to ``PATH`` (a rank's event stream) as a worker does:
  ``{pid:NAME}`` becomes that process's PID and every ``"time": <number>`` the current ``time.time()`` (the
  lines are copied from a real launch: their stamps and PIDs are that launch's);
* ``{"remove": FOLDER}``: delete a run folder (as a user might, mid-run);
* ``{"log": TEXT}``: print ``TEXT`` to stdout, which memprobe sends to ``torchrun.log``;
* ``{"sleep": SECONDS}``;
* ``{"kill": NAME, "signal": N}``: signal a spawned process (a rank that dies);
* ``{"finish": NAME}``: end a spawned process as one that exited 0 by itself (a rank that finished);
* ``{"exit": CODE}``: exit at once.

After the last action it does what torchrun's agent does with its workers: it waits until every spawned
process has ended, then exits 1 if one of them failed (killed or non-zero), else 0. Nothing here imports
torch or memprobe: it starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

STAMP = re.compile(r'"time": [0-9.e+-]+')


def main(script_path: str) -> int:
    with open(script_path, encoding="utf-8") as stream:
        actions = json.load(stream)
    spawned: dict[str, subprocess.Popen] = {}
    finished: set[str] = set()
    for action in actions:
        if "spawn" in action:
            # SIG_IGN survives exec (signal(7)): the sleep ignores SIGTERM as a wedged process would
            ignore = "trap '' TERM; " if action.get("ignore_sigterm") else ""
            spawned[action["spawn"]] = subprocess.Popen(["sh", "-c", f"{ignore}exec sleep 600"])
        elif "append" in action:
            text = action["text"]
            for name, process in spawned.items():
                text = text.replace(f"{{pid:{name}}}", str(process.pid))
            text = STAMP.sub(lambda _: f'"time": {time.time()!r}', text)
            os.makedirs(os.path.dirname(action["append"]), exist_ok=True)
            with open(action["append"], "a", encoding="utf-8") as stream:
                stream.write(text)
        elif "remove" in action:
            shutil.rmtree(action["remove"], ignore_errors=True)
        elif "log" in action:
            print(action["log"], flush=True)
        elif "sleep" in action:
            time.sleep(action["sleep"])
        elif "kill" in action:
            spawned[action["kill"]].send_signal(action.get("signal", 9))
            spawned[action["kill"]].wait()
        elif "finish" in action:
            spawned[action["finish"]].kill()
            spawned[action["finish"]].wait()
            finished.add(action["finish"])
        elif "exit" in action:
            return int(action["exit"])
    codes = [0 if name in finished else process.wait() for name, process in spawned.items()]
    return 1 if any(code != 0 for code in codes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
