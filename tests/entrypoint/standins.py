"""Stand-in programs for what entrypoint.sh starts: kubelet, cri-dockerd and host tools.

Each writes what it was given (argv, the mount table it sees, probed paths) as JSON lines
into ``$STANDIN_LOG`` so a test can check the exec and the preparation that preceded it.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

_COMMON = """\
import json, os, signal, socket, sys, time

def record(**fields):
    fields.update(name=os.path.basename(sys.argv[0]), argv=sys.argv[1:], pid=os.getpid())
    with open(os.environ["STANDIN_LOG"], "a") as out:
        out.write(json.dumps(fields) + "\\n")

def probe():
    found = {}
    for path in filter(None, os.environ.get("STANDIN_PROBE", "").split(":")):
        item = {"exists": os.path.lexists(path)}
        if os.path.islink(path):
            item["link"] = os.readlink(path)
        if os.path.isfile(path):
            item["text"] = open(path).read()
            item["mode"] = os.stat(path).st_mode & 0o7777
        if os.path.isdir(path):
            item["list"] = sorted(os.listdir(path))
        found[path] = item
    return found

def on_term(signum, frame):
    record(event="signal", signal=signum)
    sys.exit(int(os.environ.get("STANDIN_TERM_CODE", "0")))
"""

# kubelet: dump everything, then behave as STANDIN_KUBELET says (exit:N | wait).
KUBELET = _COMMON + """
mode = os.environ.get("STANDIN_KUBELET", "exit:0")
signal.signal(signal.SIGTERM, on_term)
record(event="start", mountinfo=open("/proc/self/mountinfo").read(), probe=probe(),
       env={k: v for k, v in os.environ.items() if k.startswith("RKE_")})
if mode.startswith("exit:"):
    time.sleep(float(os.environ.get("STANDIN_KUBELET_DELAY", "0")))
    sys.exit(int(mode.split(":")[1]))
while True:
    time.sleep(0.1)
"""

# cri-dockerd: listen on the endpoint's socket under SIDEKICK_ROOT (unless STANDIN_CRI=mute),
# then exit after STANDIN_CRI_EXIT_AFTER seconds with STANDIN_CRI_CODE, or wait for SIGTERM.
CRI_DOCKERD = _COMMON + """
signal.signal(signal.SIGTERM, on_term)
record(event="start")
endpoint = "unix:///var/run/cri-dockerd.sock"
for arg in sys.argv[1:]:
    if arg.startswith("--container-runtime-endpoint="):
        endpoint = arg.split("=", 1)[1]
path = os.environ.get("SIDEKICK_ROOT", "/").rstrip("/") + endpoint[len("unix://"):]
if os.environ.get("STANDIN_CRI") != "mute":
    time.sleep(float(os.environ.get("STANDIN_CRI_LISTEN_AFTER", "0.2")))
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)
after = os.environ.get("STANDIN_CRI_EXIT_AFTER")
if after:
    time.sleep(float(after))
    record(event="exit")
    sys.exit(int(os.environ.get("STANDIN_CRI_CODE", "0")))
while True:
    time.sleep(0.1)
"""

# A host tool (update-alternatives, modprobe, chcon): record and exit STANDIN_TOOL_CODE.
TOOL = _COMMON + """
record(event="run")
sys.exit(int(os.environ.get("STANDIN_TOOL_CODE", "0")))
"""


def install(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def read_log(path: Path) -> list[dict[str, object]]:
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
