"""The image itself (CONTRACT 1.3) and its volume form inside foreign images (CONTRACT 2)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from sidekick.etcd.cli import SUBCOMMANDS
from tests.container.docker import DOCKER, FOREIGN, IMAGE, VOLUME_PYTHON, Containers, docker

pytestmark = pytest.mark.container

VOLUME_NAMES = ("entrypoint.sh", "cloud-provider.sh", "weave-plugins-cni.sh", "rke-etcd-backup")
SCHEDULER_ARGS = [
    "--v=2",
    "--kubeconfig=/etc/kubernetes/ssl/kubecfg-kube-scheduler.yaml",
    "--authentication-kubeconfig=/etc/kubernetes/ssl/kubecfg-kube-scheduler.yaml",
    "--leader-elect=true",
    "--profiling=false",
    "--address=",
]
# What a hyperkube image may carry that must not leak into the volume's Python.
HOSTILE_ENV = {
    "PYTHONPATH": "/nonexistent/site",
    "PYTHONHOME": "/nonexistent/home",
    "PYTHONSTARTUP": "/nonexistent/startup.py",
    "LANG": "de_DE.ISO-8859-1",
    "LD_LIBRARY_PATH": "/nonexistent/lib",
}


def standin_bin(tmp_path: Path, **links: str) -> Path:
    """A directory for /usr/local/bin in the foreign container: component name -> a program of
    that image (a link resolved inside the container, e.g. kube-scheduler -> /bin/echo)."""
    directory = tmp_path / "standin-bin"
    directory.mkdir()
    for name, target in links.items():
        (directory / name).symlink_to(target)
    return directory


def test_default_cmd_exits_at_once_and_no_entrypoint_swallows_cmd() -> None:
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", IMAGE).stdout)
    assert config["Entrypoint"] is None
    assert "/opt/rke-tools" in config["Volumes"]
    start = time.monotonic()
    done = docker("run", "--rm", IMAGE, timeout=60)
    assert done.returncode == 0
    assert time.monotonic() - start < 20
    # RKE sets only Cmd for its helpers: it must run as given.
    assert docker("run", "--rm", IMAGE, "echo", "cmd passed through").stdout == "cmd passed through\n"


def test_image_holds_what_rke_calls() -> None:
    script = r"""
set -e
for n in entrypoint.sh cloud-provider.sh weave-plugins-cni.sh rke-etcd-backup; do
  test -x /opt/rke-tools/$n; echo "link $n $(readlink -f /opt/rke-tools/$n)"
done
for n in cert-deployer nginx-proxy; do echo "bin $n $(readlink -f $(command -v $n))"; done
echo "etcdctl $(/usr/local/bin/etcdctl version | grep -c 'API version: 3')"
echo "stream $(nginx -V 2>&1 | grep -o 'with-stream=dynamic' | head -1) $(ls /usr/lib/nginx/modules/ngx_stream_module.so)"
for t in setfacl md5sum cut tr find tar nc seq mktemp sleep chmod chown mv ln mkdir ls test; do
  command -v $t >/dev/null && echo "tool $t"
done
echo "cni $(stat -c %a /tmp/loopback) $(stat -c %a /tmp/portmap)"
echo "cri $(/opt/rke-tools/bin/cri-dockerd --version >/dev/null && echo ok)"
echo "sh $(readlink -f /bin/sh)"
printf 'echo-e %s\n' "$(sh -c 'echo -e "a\tb"')"
echo "python $(command -v python3 python || echo none)"
"""
    out = docker("run", "--rm", IMAGE, "bash", "-c", script).stdout.splitlines()
    for name in VOLUME_NAMES:
        assert f"link {name} /opt/rke-tools/sidekick" in out
    assert "bin cert-deployer /opt/rke-tools/sidekick" in out
    assert "bin nginx-proxy /opt/rke-tools/sidekick" in out
    assert "etcdctl 1" in out
    assert "stream with-stream=dynamic /usr/lib/nginx/modules/ngx_stream_module.so" in out
    tools = {line.split()[1] for line in out if line.startswith("tool ")}
    assert tools == {"setfacl", "md5sum", "cut", "tr", "find", "tar", "nc", "seq", "mktemp", "sleep",
                     "chmod", "chown", "mv", "ln", "mkdir", "ls", "test"}
    assert "cni 755 755" in out
    assert "cri ok" in out
    assert "sh /usr/bin/bash" in out
    assert "echo-e a\tb" in out  # RKE's file-deployer relies on bash's echo -e
    assert "python none" in out  # one Python only: the volume's


def test_entrypoint_runs_a_component_inside_a_foreign_image_without_python(
    tmp_path: Path, containers: Containers, service_sidekick: str
) -> None:
    """kube-scheduler as RKE runs it (CONTRACT 2.4), in Debian 11 with no Python at all."""
    assert docker("run", "--rm", "--entrypoint", "/bin/bash", FOREIGN, "-c",
                  "ls /usr/bin/python* /usr/local/bin/python* 2>/dev/null | wc -l").stdout.strip() == "0"
    (tmp_path / "etc/kubernetes/ssl").mkdir(parents=True)
    bins = standin_bin(tmp_path, **{"kube-scheduler": "/bin/echo"})
    code, out, err = containers.run_once(
        "kube-scheduler",
        image=FOREIGN,
        entrypoint=["/opt/rke-tools/entrypoint.sh", "kube-scheduler", *SCHEDULER_ARGS],
        env=HOSTILE_ENV,
        binds=[f"{tmp_path}/etc/kubernetes:/etc/kubernetes", f"{bins}:/usr/local/bin:ro"],
        network="host",
        volumes_from=[service_sidekick],
    )
    assert code == 0, err
    assert out == " ".join(SCHEDULER_ARGS) + "\n"
    assert "level=error" not in err and "level=fatal" not in err and "Traceback" not in err


def test_cmd_after_the_entrypoint_reaches_the_component(
    tmp_path: Path, containers: Containers, service_sidekick: str
) -> None:
    """kube-controller-manager: RKE puts --use-service-account-credentials=true in Cmd."""
    bins = standin_bin(tmp_path, **{"kube-controller-manager": "/bin/echo"})
    code, out, _ = containers.run_once(
        "kube-controller-manager",
        image=FOREIGN,
        entrypoint=["/opt/rke-tools/entrypoint.sh", "kube-controller-manager", "--v=2", "--cloud-provider="],
        cmd=["--use-service-account-credentials=true"],
        binds=[f"{bins}:/usr/local/bin:ro"],
        network="host",
        volumes_from=[service_sidekick],
    )
    assert code == 0
    assert out == "--v=2 --cloud-provider= --use-service-account-credentials=true\n"


def test_component_gets_the_environment_bash_would_give_it(
    tmp_path: Path, containers: Containers, service_sidekick: str
) -> None:
    """No trace of the volume's Python in the component's environment: not PEP 538's
    LC_CTYPE coercion, not the launcher's hand-over variable; the image's env is kept."""
    bins = standin_bin(tmp_path, **{"kube-apiserver": "/usr/bin/env"})
    common = {"image": FOREIGN, "env": HOSTILE_ENV, "binds": [f"{bins}:/usr/local/bin:ro"],
              "network": "host", "volumes_from": [service_sidekick]}
    code, ours, _ = containers.run_once(
        "kube-apiserver", entrypoint=["/opt/rke-tools/entrypoint.sh", "kube-apiserver"], **common)
    assert code == 0
    code, bash, _ = containers.run_once(
        "kube-apiserver-bash", entrypoint=["/bin/bash", "-c", 'exec "$@"', "_", "kube-apiserver"], **common)
    assert code == 0
    bash_only = {"_", "SHLVL", "PWD", "OLDPWD"}

    def env_lines(text: str) -> set[str]:
        return {line for line in text.splitlines() if line.partition("=")[0] not in bash_only}

    assert env_lines(ours) == env_lines(bash)
    assert "PYTHONPATH=/nonexistent/site" in env_lines(ours)
    assert not any(line.startswith(("LC_CTYPE=", "SIDEKICK_")) for line in env_lines(ours))


def test_the_images_preload_reaches_the_component_but_not_the_volumes_python(
    tmp_path: Path, containers: Containers, service_sidekick: str
) -> None:
    """A library the foreign image preloads is built for its own C library: the bundled loader
    must not load it into the volume's Python, and the component must still get it."""
    bins = standin_bin(tmp_path, **{"kube-apiserver": "/usr/bin/env"})
    preload = "/nonexistent/libpreload.so"
    code, out, err = containers.run_once(
        "kube-apiserver-preload", image=FOREIGN, env={"LD_PRELOAD": preload},
        binds=[f"{bins}:/usr/local/bin:ro"], network="host", volumes_from=[service_sidekick],
        entrypoint=["/opt/rke-tools/entrypoint.sh", "kube-apiserver"])
    assert code == 0
    assert f"LD_PRELOAD={preload}" in out.splitlines()
    assert not any(line.startswith("SIDEKICK_") for line in out.splitlines())
    # ld.so complains once per dynamically linked program started with the preload: only the
    # component (env) was; the static launcher and the volume's Python were not.
    assert err.count("cannot be preloaded") == 1, err


def test_volume_needs_no_c_library_from_the_image(tmp_path: Path, containers: Containers,
                                                  service_sidekick: str) -> None:
    """An image with nothing in it at all still runs the volume's tools."""
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    tag = "sidekick-test/empty:latest"
    subprocess.run([DOCKER, "import", str(empty), tag], check=True, capture_output=True, timeout=60)
    code, out, err = containers.run_once(
        "empty", image=tag, entrypoint=["/opt/rke-tools/rke-etcd-backup", "--help"],
        network="none", volumes_from=[service_sidekick], env=HOSTILE_ENV)
    assert code == 0, err
    assert "etcd-backup" in out + err


def glibc_versions(path: Path) -> set[tuple[int, ...]]:
    """GLIBC_x.y symbol versions an ELF file requires (objdump -T)."""
    done = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True, check=False)
    return {tuple(int(p) for p in m.split(".")) for m in re.findall(r"\(GLIBC_([0-9.]+)\)", done.stdout)}


def test_every_elf_in_the_volume_is_served_by_the_bundled_c_library(tmp_path: Path,
                                                                      containers: Containers) -> None:
    """The glibc floor: whatever the volume's binaries need, the volume's libc provides."""
    name = containers.create("volume-copy")
    raw = subprocess.run([DOCKER, "cp", f"{name}:/opt/rke-tools", "-"], capture_output=True, check=True,
                         timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=raw, check=True, timeout=120)
    volume = tmp_path / "rke-tools"
    elves = [p for p in volume.rglob("*") if p.is_file() and not p.is_symlink()
             and p.read_bytes()[:4] == b"\x7fELF"]
    needed = set().union(*(glibc_versions(p) for p in elves))
    provided = {tuple(int(p) for p in m.split("."))
                for m in re.findall(r"GLIBC_([0-9.]+)", subprocess.run(
                    ["objdump", "-p", str(volume / "lib/libc.so.6")], capture_output=True, text=True,
                    check=True).stdout)}
    assert needed and needed <= provided
    interp = subprocess.run(["readelf", "-l", str(volume / "sidekick")], capture_output=True, text=True,
                            check=True).stdout
    assert "INTERP" not in interp  # static: no loader of the foreign image
    assert (volume / "lib/ld-linux-x86-64.so.2").is_file()


HELP_COMMANDS = [
    ["--help"], ["install", "--help"], ["rke-etcd-backup", "--help"], ["rke-etcd-backup", "etcd-backup", "--help"],
    *(["rke-etcd-backup", "etcd-backup", name, "--help"] for name in SUBCOMMANDS),
]


def test_the_volume_holds_no_docstrings_and_helps_as_the_checkout_does() -> None:
    """The volume's bytecode is compiled without docstrings and run with -OO (about 1 MiB less
    per process): every help text must come from the code, not from a docstring."""
    script = "\n".join(f"sidekick {' '.join(argv)} 2>&1; echo \"rc=$?\"; echo ---" for argv in HELP_COMMANDS)
    probe = ("import sys; sys.path.append(sys.prefix + '/lib/python3/site-packages'); "
             "import click, sidekick.etcd.save as m; print(sys.flags.optimize, m.__doc__, click.Group.__doc__)")
    out = docker("run", "--rm", IMAGE, "bash", "-c", f"{VOLUME_PYTHON} -c \"{probe}\"; echo ---; {script}").stdout
    flags, _, helps = out.partition("---\n")
    assert flags.split() == ["2", "None", "None"]
    checkout = Path(sys.executable).with_name("sidekick")
    expected = "".join(
        f"{done.stdout}rc={done.returncode}\n---\n"
        for done in (subprocess.run([str(checkout), *argv], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, timeout=30) for argv in HELP_COMMANDS)
    )
    assert helps == expected
    assert "Perform etcd backup tools." in helps and "lay out the image's tool names" in helps
