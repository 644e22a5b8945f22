"""A metric's Space app as a user meets it: served by gradio on this machine, opened in headless Chromium (driven by
Playwright, with the system's Chromium), the Compute button clicked on the example the page opens with, and the
tables read off the page.

    python tests/metric_app_browser.py                   # every app: the tables the page shows after Compute
    python tests/metric_app_browser.py --screenshots docs  # ... and docs/metric_app_<name>.png

Needs gradio (the `spaces` extra), `pip install playwright` (its own browsers are not needed) and Chromium
(`apt-get install chromium`). tests/test_metric_apps.py runs it on every app (a slow test, skipped without them).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import sys
from types import ModuleType


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = os.path.join(ROOT, "hf_memory", "metrics")
APPS = ("extractable_memorization", "graph_reasoning", "membership_inference")

# The cells of a gradio table, by their ARIA roles: {header: text} per row, and the row count the table announces.
_READ_TABLE = """table => {
    const headers = Array.from(table.querySelectorAll("th[role=columnheader]")).map(th => th.getAttribute("title"));
    const rows = {};
    for (const cell of table.querySelectorAll("[role=gridcell]")) {
        (rows[cell.dataset.row] ??= {})[headers[Number(cell.dataset.col)]] = cell.innerText.trim();
    }
    const grid = table.querySelector("[role=grid]");
    return {
        rows: Object.keys(rows).sort((a, b) => a - b).map(key => rows[key]),
        announced: Number(grid.getAttribute("aria-rowcount")) - 1,
    };
}"""


_HAS_RESULTS = """() => {
    const cell = document.querySelector('#results [data-testid="cell-0-0"]');
    return cell !== null && cell.innerText.trim() !== "";
}"""


def chromium() -> str | None:
    """The path of the system's Chromium, or None."""
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def load_app(name: str) -> ModuleType:
    """Import `hf_memory/metrics/<name>/app.py` as a module (it builds the page; `demo.launch()` serves it)."""
    spec = importlib.util.spec_from_file_location(f"metric_app_{name}", os.path.join(METRICS, name, "app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tables_after_compute(module: ModuleType, screenshot: str | None = None) -> dict[str, list[dict[str, str]]]:
    """Serve the app, open it in headless Chromium, click Compute and read the tables it then shows.

    Args:
        module: An app module from `load_app`.
        screenshot: A PNG file for the whole page after Compute, or None.

    Returns:
        `{"results": rows, "per-sample": rows}` (the second only where the app has it), each row `{header: text}`
        as the page shows it.
    """
    from playwright.sync_api import sync_playwright

    port = _free_port()
    module.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/")
                page.click("#compute")
                # Before Compute the results table has its headers and no rows; its first cell comes with the numbers.
                page.wait_for_function(_HAS_RESULTS, timeout=60_000)
                tables = {}
                for name in ("results", "per-sample"):
                    if page.locator(f"#{name}").count():
                        table = page.locator(f"#{name}").first.evaluate(_READ_TABLE)
                        assert len(table["rows"]) == table["announced"], (name, table)  # every row was drawn
                        tables[name] = table["rows"]
                if screenshot:
                    page.screenshot(path=screenshot, full_page=True)
                return tables
            finally:
                browser.close()
    finally:
        module.demo.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", metavar="FOLDER", help="write FOLDER/metric_app_<name>.png")
    parser.add_argument("apps", nargs="*", default=APPS, help="which apps (default: all)")
    args = parser.parse_args(argv)
    if chromium() is None:
        sys.exit("Chromium is not installed (apt-get install chromium).")
    for name in args.apps:
        screenshot = os.path.join(args.screenshots, f"metric_app_{name}.png") if args.screenshots else None
        tables = tables_after_compute(load_app(name), screenshot)
        for table, rows in tables.items():
            print(f"{name} / {table}:")
            for row in rows:
                print("   ", " | ".join(row.values()))


if __name__ == "__main__":
    main()
