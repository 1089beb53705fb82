"""`make package-check`: the wheel built from this checkout installs and runs anywhere, outside the checkout.

Steps (issue 23, "The package"), each failing with a message naming what went wrong:

1. `python -m build` makes a wheel and an sdist in a temporary directory; `twine check --strict` passes on both,
   and both hold `LICENSE`, `py.typed`, the JS client with its declarations (`client.js`, `client.d.ts`) and every
   file of `wsgate/dashboard/static/` (the wheel's metadata: `Requires-Python`, `License-Expression`).
2. A fresh virtual environment in that temporary directory; pip installs the wheel there (dependencies from the
   package index). From a working directory outside the checkout, with no `WSGATE_*`/`WEBSOCKET_*`/`PYTHONPATH`
   variable inherited: `import wsgate` finds the installed copy, `wsgate --version` names the wheel's version, and
   `wsgate check` accepts the repository's `settings.toml` (copied there).
3. The gateway (`python -m wsgate --host 127.0.0.1 --port <free>`, `WEBSOCKET_ENABLED=true`, the dashboard on with a
   password) answers `/health` (healthy, the wheel's version), `/client.js` and every dashboard file, each byte for
   byte as in the checkout (`index.html` after logging in with the password). It is stopped (SIGTERM, then SIGKILL
   after 30 s) on every path.
4. `pip install '<wheel>[redis]'`, then `import redis` works in that environment.

Run with the checkout's virtual environment (`.venv/bin/python tools/package_check.py`: it needs `build` and
`twine`, from the test extra). Exit status 0 when everything holds, 1 otherwise.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from email.parser import HeaderParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "wsgate" / "static"
DASHBOARD_STATIC = ROOT / "wsgate" / "dashboard" / "static"
PASSWORD = "package-check-password"  # the dashboard's (at least 12 characters)
START_TIMEOUT = 30.0  # seconds for the gateway's "listening on" line
STOP_TIMEOUT = 30.0  # seconds between SIGTERM and SIGKILL (the drain takes shutdown.window, 5 s)
COMMAND_TIMEOUT = 600.0  # seconds for a build or a pip install


class CheckFailed(Exception):
    """One step failed; the message says which and why."""


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="wsgate-package-check-") as temporary:
        try:
            check(Path(temporary))
        except CheckFailed as failure:
            print(f"package-check: FAILED: {failure}", file=sys.stderr)
            return 1
    print("package-check: OK")
    return 0


def check(tmp: Path) -> None:
    wheel, sdist = build(tmp / "dist")
    version = inspect_archives(wheel, sdist)
    venv = tmp / "venv"
    say(f"a fresh virtual environment in {venv}")
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    say(f"pip install {wheel.name}")
    run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], timeout=COMMAND_TIMEOUT)
    work = tmp / "work"
    work.mkdir()
    shutil.copy(ROOT / "settings.toml", work / "settings.toml")
    env = clean_env()
    location = run([str(python), "-c", "import wsgate; print(wsgate.__file__)"], cwd=work, env=env).strip()
    if not Path(location).is_relative_to(venv):
        raise CheckFailed(f"import wsgate found {location}, not the copy installed in {venv}")
    shown = run([str(venv / "bin" / "wsgate"), "--version"], cwd=work, env=env).strip()
    if shown != f"wsgate {version}":
        raise CheckFailed(f"wsgate --version printed {shown!r}, expected 'wsgate {version}'")
    say(f"wsgate --version: {shown}")
    gateway_env = {
        **env,
        "WEBSOCKET_ENABLED": "true",
        "WSGATE_DASHBOARD__ENABLED": "true",
        "WSGATE_DASHBOARD__PASSWORD": PASSWORD,
    }
    run([str(venv / "bin" / "wsgate"), "check", "--settings", "settings.toml"], cwd=work, env=gateway_env)
    say("wsgate check --settings settings.toml: valid")
    port = free_port()
    command = [str(python), "-m", "wsgate", "--host", "127.0.0.1", "--port", str(port)]
    with gateway(command, work, gateway_env) as base:
        fetch_everything(base, version)
    say(f"pip install {wheel.name}[redis]")
    run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[redis]"], timeout=COMMAND_TIMEOUT)
    redis_version = run([str(python), "-c", "import redis; print(redis.__version__)"], cwd=work, env=env).strip()
    say(f"import redis: redis-py {redis_version}")


def build(outdir: Path) -> tuple[Path, Path]:
    """`python -m build` of the checkout into `outdir`, then `twine check --strict`: (wheel, sdist)."""
    say("python -m build")
    run([sys.executable, "-m", "build", "--outdir", str(outdir), str(ROOT)], timeout=COMMAND_TIMEOUT)
    wheels, sdists = list(outdir.glob("wsgate-*.whl")), list(outdir.glob("wsgate-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise CheckFailed(f"python -m build made {[p.name for p in outdir.iterdir()]}: expected one wheel, one sdist")
    run([sys.executable, "-m", "twine", "check", "--strict", str(wheels[0]), str(sdists[0])])
    say(f"twine check --strict: {wheels[0].name} and {sdists[0].name} pass")
    return wheels[0], sdists[0]


def inspect_archives(wheel: Path, sdist: Path) -> str:
    """The files both archives must hold, and the wheel's metadata; returns the wheel's version."""
    package_files = ["wsgate/py.typed", "wsgate/static/client.js", "wsgate/static/client.d.ts"]
    package_files += [f"wsgate/dashboard/static/{path.name}" for path in sorted(DASHBOARD_STATIC.iterdir())]
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = HeaderParser().parsestr(archive.read(metadata_name).decode())
    dist_info = metadata_name.rsplit("/", 1)[0]
    missing = [name for name in [*package_files, f"{dist_info}/licenses/LICENSE"] if name not in names]
    if missing:
        raise CheckFailed(f"the wheel {wheel.name} lacks {missing}")
    with tarfile.open(sdist) as archive:
        prefix = sdist.name.removesuffix(".tar.gz")
        sdist_names = {name.removeprefix(f"{prefix}/") for name in archive.getnames()}
    missing = [name for name in [*package_files, "LICENSE", "PKG-INFO", "pyproject.toml"] if name not in sdist_names]
    if missing:
        raise CheckFailed(f"the sdist {sdist.name} lacks {missing}")
    wanted = {"Requires-Python": ">=3.11", "License-Expression": "MIT", "License-File": "LICENSE"}
    wrong = {key: metadata.get(key) for key, value in wanted.items() if metadata.get(key) != value}
    classifiers = metadata.get_all("Classifier") or []
    if wrong or "Typing :: Typed" not in classifiers:
        raise CheckFailed(f"the wheel's metadata: {wrong} (expected {wanted}), classifiers {classifiers}")
    say(f"{wheel.name} and {sdist.name} hold LICENSE, py.typed, client.js, client.d.ts and the dashboard's files")
    return str(metadata["Version"])


def fetch_everything(base: str, version: str) -> None:
    """/health, /client.js and every dashboard file (the page after logging in), byte for byte as checked out."""
    status, body = get(base + "/health")
    health = json.loads(body)
    if status != 200 or health.get("status") != "healthy" or health.get("version") != version:
        raise CheckFailed(f"/health answered {status} {body!r}: expected healthy, version {version}")
    say(f"/health: {body.decode()}")
    expect_file(base + "/client.js", STATIC / "client.js")
    expect_file(base + "/dashboard", DASHBOARD_STATIC / "login.html")  # no session yet: the login form
    for path in sorted(DASHBOARD_STATIC.iterdir()):
        if path.suffix in (".css", ".js"):
            expect_file(f"{base}/dashboard/{path.name}", path)
    expect_file(base + "/favicon.ico", DASHBOARD_STATIC / "favicon.svg")
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = urllib.parse.urlencode({"secret": PASSWORD}).encode()
    with opener.open(urllib.request.Request(base + "/dashboard/login", data=form), timeout=10) as answer:
        page = answer.read()  # the 302 to /dashboard followed with the session cookie
    if page != (DASHBOARD_STATIC / "index.html").read_bytes():
        raise CheckFailed(f"logging in to the dashboard did not lead to index.html: {page[:200]!r}")
    say("/dashboard after logging in: index.html")


def expect_file(url: str, path: Path) -> None:
    status, body = get(url)
    if status != 200 or body != path.read_bytes():
        raise CheckFailed(f"{url} answered {status} with {len(body)} bytes, not {path.relative_to(ROOT)}")
    say(f"{urllib.parse.urlsplit(url).path}: {path.relative_to(ROOT)}, {len(body)} bytes")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError as error:
        raise CheckFailed(f"GET {url}: {error}") from error


@contextmanager
def gateway(command: Sequence[str], cwd: Path, env: dict[str, str]) -> Iterator[str]:
    """Start the gateway, yield its base URL once its start-up line says it listens; always stop it."""
    say("$ python " + " ".join(command[1:]))
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)  # the process closed its output: it ended

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                waited = f"the gateway did not say it listens within {START_TIMEOUT:.0f} s:\n"
                raise CheckFailed(waited + "".join(output)) from None
            if line is None:
                raise CheckFailed(f"the gateway exited with {process.wait()} at start-up:\n" + "".join(output))
            output.append(line)
            if " listening on " in line:
                break
        say(line.strip())
        port = command[command.index("--port") + 1]
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM (a graceful drain), SIGKILL to its process group if it is still there after STOP_TIMEOUT."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    say(f"the gateway stopped ({process.returncode})")


def clean_env() -> dict[str, str]:
    """This environment without what would point the installed copy back at the checkout or change its settings."""
    dropped = ("WSGATE_", "WEBSOCKET_", "PYTHON", "VIRTUAL_ENV", "DYNACONF", "SETTINGS_FILE")
    return {key: value for key, value in os.environ.items() if not key.startswith(dropped)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(
    command: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120.0
) -> str:
    """Run a command to its end; its standard output, or CheckFailed with everything it printed."""
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CheckFailed(f"{' '.join(command)}: {error}") from error
    if result.returncode != 0:
        raise CheckFailed(f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout


def say(text: str) -> None:
    print(f"package-check: {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
