"""End to end in a real browser: Voila serves a course notebook, Chromium moves a slider, the figure follows.

Voila runs the notebook (SMOKE=True injected by papermill) on 127.0.0.1 and
headless Chromium, driven by Playwright, opens it. Each redraw of an
``Explorer`` writes ``<span class="fedmoe-drawn" data-state="...">``; the test
presses an arrow key several times on one slider (each press redraws once) and
waits for the marker of the *last* value before it compares the figures.
Screenshots before and after land in build/browser/ (kept by CI).

Needs Debian's Chromium and the notebooks extra (voila, playwright); skips with
the install command otherwise. Never ``playwright install``: it downloads a
browser build; the system Chromium is launched by path.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SHOTS = ROOT / "build" / "browser"
CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/lib/chromium-browser/chromium-browser")
INSTALL = "apt-get install -y chromium && pip install -e '.[notebooks]'"
PRESSES = 3          # arrow-key presses on the slider: one redraw each


def chromium() -> str | None:
    """The real Chromium binary (not Debian's /usr/bin wrapper script), or None."""
    found = os.environ.get("FEDMOE_CHROMIUM") or next((p for p in CHROMIUM_PATHS if os.access(p, os.X_OK)), None)
    return found if found and os.access(found, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SCRATCH = '''
# %% tags=["parameters"]
SMOKE = False

# %%
from ipywidgets import FloatLogSlider, IntSlider
from fedmoe_da import ExperimentConfig, viz
from fedmoe_da import data as fdata
from fedmoe_da.widgets import Explorer

config = ExperimentConfig().smoke()
dataset = fdata.build(config)

def plot(alpha, clients):
    c = config.replace(alpha=alpha, num_clients=clients)
    return viz.plot_partition(fdata.client_counts(fdata.partition(dataset, c), dataset), title=f"alpha={alpha:.3g}")

Explorer(plot, {"alpha": FloatLogSlider(value=0.5, base=10, min=-2, max=2, step=0.25, description="alpha"),
                "clients": IntSlider(value=4, min=2, max=8, description="clients")}, "partition")
'''


def smoke_notebook(tmp: Path) -> Path:
    """The notebook as an .ipynb in tmp with SMOKE=True injected after its parameters cell (as papermill does)."""
    import jupytext
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = jupytext.reads(SCRATCH, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp / "explorer.ipynb"
    nbformat.write(nb, path)
    nbformat.write(parameterize_notebook(load_notebook_node(str(path)), {"SMOKE": True}), path)
    return path


@pytest.fixture
def browser_exe() -> str:
    """Chromium's path, after checking that everything the test needs is installed (else skip, saying how)."""
    exe = chromium()
    if exe is None:
        pytest.skip(f"no Chromium at {' or '.join(CHROMIUM_PATHS)} (or $FEDMOE_CHROMIUM): {INSTALL}")
    for module in ("voila", "playwright.sync_api"):
        pytest.importorskip(module, reason=f"{module.split('.')[0]} is missing: {INSTALL}")
    return exe


@pytest.fixture
def voila_url(browser_exe: str, tmp_path: Path):
    notebook = smoke_notebook(tmp_path)
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    log = (tmp_path / "voila.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "voila", notebook.name, "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1", "--VoilaExecutor.timeout=40", "--show_tracebacks=True"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"voila did not listen on 127.0.0.1:{port}:\n{(tmp_path / 'voila.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/", tmp_path / "voila.log"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# The drawn marker's value for one control, and the slider's readout: equal up to the readout's printed digits.
MARKER_SHOWS_READOUT = """([name, before]) => {
    const span = document.querySelector('.fedmoe-drawn');
    const slider = [...document.querySelectorAll('.widget-slider')]
        .find(s => s.querySelector('.widget-label')?.textContent.trim() === name);
    if (!span || !slider) return false;
    const state = span.dataset.state;
    const drawn = Object.fromEntries(state.split(', ').map(kv => kv.split('=')));
    const readout = slider.querySelector('.widget-readout').textContent.trim();
    const digits = (readout.split('.')[1] || '').replace(/[^0-9].*$/, '').length;
    return state !== before && Math.abs(parseFloat(drawn[name]) - parseFloat(readout)) <= 0.5 * 10 ** -digits + 1e-12;
}"""


def test_slider_redraws_in_chromium(browser_exe: str, voila_url):
    from playwright import sync_api

    url, log = voila_url
    name = "alpha"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_exe, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(url, wait_until="domcontentloaded")
            try:
                page.wait_for_selector(".fedmoe-drawn", state="attached", timeout=40_000)
            except sync_api.TimeoutError:
                pytest.fail(f"no widget drew within 40 s; voila log:\n{log.read_text()[-3000:]}")
            image = page.locator(".widget-output img").first
            image.wait_for()
            before_state = page.locator(".fedmoe-drawn").get_attribute("data-state")
            before_src = image.get_attribute("src")
            page.screenshot(path=SHOTS / "before.png", full_page=True)

            slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text=name))
            slider.locator(".noUi-handle").focus()
            for _ in range(PRESSES):
                page.keyboard.press("ArrowRight")
            page.wait_for_function(MARKER_SHOWS_READOUT, arg=[name, before_state], timeout=30_000)
            after_state = page.locator(".fedmoe-drawn").get_attribute("data-state")
            after_src = page.locator(".widget-output img").first.get_attribute("src")
            page.screenshot(path=SHOTS / "after.png", full_page=True)
        finally:
            browser.close()

    drawn = lambda state: dict(kv.split("=") for kv in state.split(", "))  # noqa: E731
    assert float(drawn(after_state)[name]) > float(drawn(before_state)[name]), (before_state, after_state)
    assert {k: v for k, v in drawn(after_state).items() if k != name} == \
        {k: v for k, v in drawn(before_state).items() if k != name}, "only the moved slider's value may change"
    assert after_src != before_src, "the figure's image did not change after the slider moved"
    assert (SHOTS / "before.png").stat().st_size > 0 and (SHOTS / "after.png").stat().st_size > 0
