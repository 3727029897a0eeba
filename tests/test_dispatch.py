"""The multi-call executable: names, help, errors, lazy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sidekick import dispatch
from tests.conftest import SIDEKICK, last_line, run_sidekick


def test_help_lists_every_tool_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatch.main(["sidekick", "--help"]) == 0
    out = capsys.readouterr().out
    for name, tool in dispatch.TOOLS.items():
        assert f"  {name}" in out
        assert tool.summary in out


def test_unknown_tool_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatch.main(["sidekick", "no-such-tool"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "level=fatal" in err and "no-such-tool" in err


@pytest.mark.parametrize("argv", [["/opt/rke-tools/typo"], ["/usr/bin/whatever", "--help"], ["typo", "install"]])
def test_a_link_named_after_no_tool_is_applet_not_found(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatch.main(argv) == 127
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "level=fatal" in captured.err and f'msg="{argv[0].rsplit("/", 1)[-1]}: applet not found"' in captured.err


@pytest.mark.parametrize("argv", [["sidekick"], ["/opt/rke-tools/sidekick", "--help"], ["/x/sidekick/__main__.py", "-h"]])
def test_sidekick_by_its_own_name_prints_its_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatch.main(argv) == 0
    assert capsys.readouterr().out.startswith("usage: sidekick TOOL")


def test_tools_without_their_own_flags_answer_help_from_their_module(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    answering = {name: tool for name, tool in dispatch.TOOLS.items() if tool.usage}
    assert set(answering) == {"cert-deployer", "nginx-proxy", "share-mnt", "share-root.sh", "weave-plugins-cni.sh"}
    for name, tool in answering.items():
        assert dispatch.main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert out == getattr(importlib.import_module(tool.target.partition(":")[0]), tool.usage)
        assert out.startswith(f"usage: {name}")


def test_every_table_entry_resolves_to_a_callable() -> None:
    import importlib

    for tool in dispatch.TOOLS.values():
        module, _, func = tool.target.partition(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_tool_errors_become_exit_codes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from sidekick.errors import SidekickError

    def boom(argv: list[str]) -> int:
        raise SidekickError("bucket snaps is not found", exit_code=3)

    def crash(argv: list[str]) -> int:
        raise ValueError("bad value")

    import types

    fake = types.ModuleType("sidekick_fake_tool")
    fake.boom = boom  # type: ignore[attr-defined]
    fake.crash = crash  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sidekick_fake_tool", fake)
    monkeypatch.setitem(dispatch.TOOLS, "boom", dispatch.Tool("sidekick_fake_tool:boom", "x"))
    monkeypatch.setitem(dispatch.TOOLS, "crash", dispatch.Tool("sidekick_fake_tool:crash", "x"))

    assert dispatch.main(["boom"]) == 3
    assert 'msg="bucket snaps is not found"' in capsys.readouterr().err
    assert dispatch.main(["crash"]) == 1
    err = capsys.readouterr().err
    assert "ValueError: bad value" in last_line(err)
    assert "Traceback" not in err


@pytest.mark.integration
def test_argv0_dispatch_through_a_symlink(tmp_path: Path) -> None:
    link = tmp_path / "install"
    link.symlink_to(SIDEKICK)
    result = run_sidekick(["--prefix", str(tmp_path / "p")], argv0=link)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p/opt/rke-tools/entrypoint.sh").is_symlink()


@pytest.mark.integration
def test_sidekick_tool_form_and_module_form_agree(tmp_path: Path) -> None:
    a = run_sidekick(["install", "--prefix", str(tmp_path / "a")])
    b = subprocess.run(
        [sys.executable, "-m", "sidekick", "install", "--prefix", str(tmp_path / "b")],
        capture_output=True, text=True, check=False,
    )
    assert a.returncode == b.returncode == 0
    assert sorted(p.name for p in (tmp_path / "a/usr/bin").iterdir()) == sorted(
        p.name for p in (tmp_path / "b/usr/bin").iterdir()
    )


@pytest.mark.integration
@pytest.mark.parametrize("tool", ["cert-deployer", "nginx-proxy", "weave-plugins-cni.sh", "share-mnt",
                                  "share-root.sh", "rke-etcd-backup", "install"])
def test_every_tool_answers_help_with_exit_0(tool: str, tool_link) -> None:  # type: ignore[no-untyped-def]
    for flag in ("--help", "-h") if tool != "rke-etcd-backup" else ("--help",):
        result = run_sidekick([flag], argv0=tool_link(tool), timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.lower().startswith("usage:") and result.stderr == ""


@pytest.mark.integration
def test_a_link_with_an_unknown_name_fails_with_one_line(tool_link) -> None:  # type: ignore[no-untyped-def]
    result = run_sidekick([], argv0=tool_link("typo"))
    assert result.returncode == 127
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and 'msg="typo: applet not found"' in result.stderr


@pytest.mark.integration
def test_unknown_tool_exit_code_from_the_real_executable() -> None:
    result = run_sidekick(["frobnicate"])
    assert result.returncode == 2
    assert "unknown tool 'frobnicate'" in last_line(result.stderr)
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_dispatch_imports_only_the_chosen_tool() -> None:
    """The hot path (entrypoint.sh before every k8s component) must stay light."""
    heavy = {"boto3", "botocore", "cryptography", "jinja2", "requests", "click"}
    argv = ["entrypoint.sh", "/bin/true"] if "entrypoint.sh" in dispatch.TOOLS else ["install", "--help"]
    code = f"import sys; sys.argv = {argv!r}; from sidekick.dispatch import run; run()"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-500:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert "sidekick" in imported
    assert not imported & heavy


def test_click_group_without_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    import click

    from sidekick.cli import run_click

    @click.group()
    def group() -> None:
        """Utility services."""

    @group.command()
    def save() -> None:
        """Take a snapshot."""

    assert run_click(group, [], prog_name="tool") == 2
    captured = capsys.readouterr()
    assert "Usage: tool" in captured.out and "save" in captured.out
    assert captured.err == ""


def test_unexpected_error_traceback_only_at_debug(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import types

    from sidekick import log as sklog

    def crash_after_debug_flag(argv: list[str]) -> int:
        sklog.set_debug("--debug" in argv)  # what a tool's --debug flag does
        raise KeyError("boom")

    fake = types.ModuleType("sidekick_fake_debug")
    fake.crash = crash_after_debug_flag  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sidekick_fake_debug", fake)
    monkeypatch.setitem(dispatch.TOOLS, "crash", dispatch.Tool("sidekick_fake_debug:crash", "x"))
    monkeypatch.delenv("RANCHER_DEBUG", raising=False)
    monkeypatch.delenv("SIDEKICK_DEBUG", raising=False)
    sklog.setup(debug=False)

    assert dispatch.main(["crash"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert dispatch.main(["crash", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err
    assert last_line(err).startswith('time="') and "unexpected error in crash: KeyError" in last_line(err)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=30)


@pytest.mark.integration
def test_the_fast_exit_keeps_the_code_the_output_and_the_exit_handlers() -> None:
    """``run`` skips the interpreter's teardown, not what the end of a process owes: the exit
    code, every byte written to a pipe, atexit handlers."""
    out = _python(
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('atexit ran\\n'))\n"
        "sys.stdout.write('x' * 300000)\n"
        "from sidekick.dispatch import run\n"
        "run(['sidekick', 'no-such-tool'])\n"
    )
    assert out.returncode == 2
    assert out.stdout == "x" * 300000
    assert "no-such-tool" in out.stderr and out.stderr.endswith("atexit ran\n")


@pytest.mark.integration
def test_a_running_non_daemon_thread_still_finishes(tmp_path: Path) -> None:
    marker = tmp_path / "thread-done"
    out = _python(
        "import threading, time\n"
        f"threading.Thread(target=lambda: (time.sleep(0.3), open({str(marker)!r}, 'w').close())).start()\n"
        "from sidekick.dispatch import run\n"
        "run(['sidekick', '--help'])\n"
    )
    assert out.returncode == 0 and "cert-deployer" in out.stdout
    assert marker.exists()
