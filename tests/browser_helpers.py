"""Real-browser plumbing: Debian's Chromium driven by Playwright, Jupyter servers in their own process group.

Never `playwright install`: the browser is Debian's /usr/bin/chromium. Every
request that is not to 127.0.0.1 is aborted (Voila asks a CDN for fonts), and
each server runs with HOME / JUPYTER_* / IPYTHONDIR in a temporary directory,
so a test neither reads nor writes the user's Jupyter settings.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kvtool import paths

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VENV_BIN = Path(sys.executable).parent


def require_browser() -> None:
    """Fail (not skip) with how to install what is missing."""
    if not Path(CHROMIUM).is_file():
        raise AssertionError(f"{CHROMIUM} is missing: `apt-get install chromium` (Debian's package; "
                             "never `playwright install`)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        raise AssertionError("playwright is missing: `.venv/bin/pip install -e .[dev]` (playwright, "
                             "pytest-playwright)") from exc
    for tool in ("voila", "jupyter-lab"):
        if not (VENV_BIN / tool).is_file():
            raise AssertionError(f"{VENV_BIN / tool} is missing: `.venv/bin/pip install -e .[notebook]`")


def isolated_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment for a Jupyter server: its own HOME and Jupyter dirs, kvtool's cluster and cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON"))}
    home = root / "home"
    for d in ("home", "jupyter-config", "jupyter-data", "jupyter-runtime", "ipython", "mpl"):
        (root / d).mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(root / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(root / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(root / "jupyter-runtime"),
        "IPYTHONDIR": str(root / "ipython"),
        "MPLCONFIGDIR": str(root / "mpl"),
        "JUPYTER_PLATFORM_DIRS": "1",
        # HOME moved: keep kvtool's cache (images, schema bytecode) and cluster where they are.
        "KVTOOL_CACHE": str(paths.cache_dir()),
        "KVTOOL_HOME": str(paths.kvtool_home()),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    env.update(extra)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(argv: list[str], env: dict[str, str], url: str, log: Path, cwd: Path,
           timeout: float = 120) -> Iterator[subprocess.Popen[bytes]]:
    """A server in its own process group, ready when `url` answers; the group is killed by PID at the end."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{argv[0]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url} did not answer within {timeout:.0f}s:\n"
                                         f"{log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (kernels included), SIGKILL what is left after 10 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # kernels the server left behind share its group
    proc.wait(timeout=10)


def only_localhost(route: Any) -> None:
    """Playwright route handler: let 127.0.0.1 through, abort everything else."""
    host = urlparse(route.request.url).hostname
    if host == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


@contextmanager
def chromium_page(viewport: tuple[int, int] = (1280, 1600)) -> Iterator[Any]:
    """A page in headless Debian Chromium with every non-127.0.0.1 request aborted."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            context.route("**/*", only_localhost)
            yield context.new_page()
        finally:
            browser.close()


def copy_screenshot(src: Path, dest: Path) -> None:
    """Refresh a committed screenshot only when asked (KVTOOL_UPDATE_SCREENSHOTS=1), never as a side effect."""
    if os.environ.get("KVTOOL_UPDATE_SCREENSHOTS") == "1":
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
