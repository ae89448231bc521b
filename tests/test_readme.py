"""Every command in README.md, run in order on a fresh copy of the repository, as a new user would.

The commands are read from the README's ```sh blocks, so the two cannot drift. Each must exit as
documented (0; for `plan` and `simulate`, 1 exactly when its output says the SLA is missed) and print
no traceback and no warning of terrazzo's own (Python warnings from terrazzo's modules, the
multiprocessing resource tracker's leaked-object warnings, or terrazzo's `warning:` lines — except
`profile --quick`, whose few points are expected to draw them). Long commands run with the smaller flags
the README names (`profile --quick`, `simulate --duration 20`); `make test` is not run, `make demo` runs
as `terrazzo demo`; `serve` is started, probed with the README's curl, and stopped with SIGTERM, its
logs going to a file that is checked the same way.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TERRAZZO = [sys.executable, "-m", "terrazzo.cli"]
PROBLEMS = re.compile(r"Traceback \(most recent call last\)|leaked \w+ objects?|/terrazzo/\S+\.py:\d+: \w*Warning")
OWN_WARNING = re.compile(r"^warning:", re.MULTILINE)


def readme_commands(text: str) -> list[str]:
    """Shell commands of the ```sh blocks, continuation lines joined, in order."""
    out: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        out += [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return out


def argv_of(command: str) -> list[str]:
    """shlex words without comments and without [optional] parts."""
    words, skipping = [], False
    for w in shlex.split(command, comments=True):
        if w.startswith("["):
            skipping = True
        if not skipping:
            words.append(w)
        if skipping and w.endswith("]"):
            skipping = False
    return words


def smaller(argv: list[str]) -> list[str]:
    """The README's documented smaller flags for its long commands."""
    argv = list(argv)
    if argv[1] == "profile" and "--quick" not in argv:
        argv.append("--quick")
    if argv[1] == "simulate" and "--duration" in argv:
        argv[argv.index("--duration") + 1] = "20"
    return argv


COMMANDS = readme_commands((ROOT / "README.md").read_text())


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository as git would check it out (tracked and new, unignored files), nothing built."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    dest = tmp_path_factory.mktemp("readme") / "terrazzo"
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def env(copy: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR", "HF_HOME")}
    engine = ROOT / ".venv-vllm" / "bin" / "python"  # `make engine` built it beside .venv, not in the copy
    found = {"TERRAZZO_VLLM_PYTHON": str(engine)} if engine.exists() else {}
    return {**keep, **found, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def _check_output(command: str, text: str, own_warnings_ok: bool = False) -> None:
    found = PROBLEMS.search(text)
    assert found is None, f"`{command}` printed {found.group(0)!r}:\n{text[-3000:]}"
    if not own_warnings_ok:
        assert not OWN_WARNING.search(text), f"`{command}` printed a warning:\n{text[-3000:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_has_the_commands() -> None:
    firsts = [argv_of(c)[:2] for c in COMMANDS]
    assert ["terrazzo", "serve"] in firsts and ["curl", "-s"] in firsts and ["make", "demo"] in firsts
    assert sum(f[0] == "terrazzo" for f in firsts) >= 20


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[" ".join(argv_of(c)[:3]) for c in COMMANDS])
def test_readme_command(index: int, copy: Path, env: dict[str, str]) -> None:
    command = COMMANDS[index]
    if command.startswith("export "):  # a shell assignment: let bash evaluate it, keep it for later commands
        name = command.split()[1].split("=", 1)[0]
        env[name] = subprocess.run(["bash", "-c", f'{command}; printf %s "${name}"'], capture_output=True,
                                   text=True, env=env, check=True).stdout
        assert env[name]
        return
    argv = argv_of(command)
    if argv[0] == "make":
        if argv[1] == "test":
            pytest.skip("`make test` is the suite itself")
        argv = ["terrazzo", "demo"]  # make demo = set up .venv (done here) + terrazzo demo
    if argv[0] == "curl":
        pytest.skip("run with `terrazzo serve`, against the server it starts")
    if argv[:2] == ["terrazzo", "serve"]:
        _serve(argv, copy, env)
        return
    assert argv[0] == "terrazzo", f"README command not runnable here: {command}"
    argv = smaller(argv)
    done = subprocess.run([*TERRAZZO, *argv[1:]], cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    text = done.stdout + done.stderr
    if argv[1] in ("plan", "simulate"):  # the answer may be "no": then it says so and exits 1
        verdicts = re.findall(r"(meets|misses) (?:the|its) SLA", text)  # the last round or report decides
        missed = bool(verdicts) and verdicts[-1] == "misses"
        assert done.returncode == (1 if missed else 0), f"`{command}` exit {done.returncode}:\n{text[-3000:]}"
    else:
        assert done.returncode == 0, f"`{command}` exit {done.returncode}:\n{text[-3000:]}"
    _check_output(command, text, own_warnings_ok=argv[1] == "profile")


def _serve(argv: list[str], copy: Path, env: dict[str, str]) -> None:
    port = _free_port()
    log = copy / "serve.log"
    curl = next(c for c in COMMANDS if c.startswith("curl "))
    with log.open("w") as out:
        proc = subprocess.Popen([*TERRAZZO, *argv[1:], "--port", str(port)], cwd=copy, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"serve not ready in 600 s:\n{log.read_text()[-3000:]}"
            time.sleep(2)
        probe = subprocess.run(["bash", "-c", curl.replace("localhost:8000", f"localhost:{port}")], cwd=copy,
                               env=env, capture_output=True, text=True, timeout=300)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        events = re.findall(r"^event: (\w+)", probe.stdout, re.MULTILINE)
        assert events[:1] == ["request"] and events[-1] == "result" and "token" in events, probe.stdout[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert code == 0, f"serve exited {code} on SIGTERM:\n{log.read_text()[-3000:]}"
    _check_output("terrazzo serve", log.read_text())
