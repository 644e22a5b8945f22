"""The docs site as a reader opens it from disk: search without a server, light and dark, the version, a repository
link, code that wraps, docstrings that render as the API reference means them, and the extras tables in step."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import yaml


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mkdocs_config() -> dict:
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def _plugin_names(config: dict) -> list[str]:
    return [p if isinstance(p, str) else next(iter(p)) for p in config["plugins"]]


def _docstring_options(config: dict) -> dict:
    plugin = next(p for p in config["plugins"] if isinstance(p, dict) and "mkdocstrings" in p)
    return plugin["mkdocstrings"]["handlers"]["python"]["options"]["docstring_options"]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_no_docstring_uses_the_singular_example_section():
    """`Example:` is no Google section: mkdocstrings renders it as a box whose `>>>` lines become nested quotes."""
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, "hf_memory")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    found += [f"{path}:{i}" for i, line in enumerate(f, 1) if line.strip() == "Example:"]
    assert found == []


def test_every_docstring_renders_its_examples_as_code_and_no_line_as_a_quote_or_heading():
    """Each docstring parsed as the API reference parses it (griffe, Google style, mkdocs.yml's options): a `>>>`
    line outside an `Examples:` section renders as nested quotes (`Example:`), a description line that starts with
    `>` as a quote (a wrapped "`>= 1`"), one that starts with `#` as a heading that lands in the table of contents
    (a `>>> # comment` outside `Examples:`)."""
    import griffe

    package = griffe.load(
        "hf_memory",
        search_paths=[ROOT],
        docstring_parser="google",
        docstring_options=_docstring_options(_mkdocs_config()),
        resolve_aliases=False,
    )

    def objects(obj):
        yield obj
        for member in obj.members.values():
            if not member.is_alias:
                yield from objects(member)

    problems, parsed = [], 0
    for obj in objects(package):
        if obj.docstring is None:
            continue
        parsed += 1
        for section in obj.docstring.parsed:
            if section.kind.value == "examples":
                continue
            items = section.value if isinstance(section.value, list) else [section.value]
            for item in items:
                text = item if isinstance(item, str) else getattr(item, "description", None) or ""
                problems += [
                    f"{obj.path} ({section.kind.value}): {line.strip()[:60]}"
                    for line in text.splitlines()
                    if line.strip().startswith((">", "#"))
                ]
    assert parsed > 500  # the walk reached the package
    assert problems == []


def test_mkdocs_config_searches_from_disk_with_dark_mode_a_repository_and_the_version():
    config = _mkdocs_config()
    assert {"search", "offline"} <= set(_plugin_names(config))  # the offline plugin: the index as a script
    assert config["use_directory_urls"] is False
    # the offline plugin adds a shim from unpkg.com unless a polyfill named iframe-worker is there: ours, local
    polyfills = config["extra"]["polyfills"]
    assert [p for p in polyfills if "iframe-worker" in p] == polyfills and polyfills
    for path in polyfills:
        assert not path.startswith(("http:", "https:", "//")) and os.path.isfile(os.path.join(ROOT, "docs", path))
    assert config["theme"]["font"] is False  # no Google Fonts request
    palettes = config["theme"]["palette"]
    assert [p["scheme"] for p in palettes] == ["default", "slate"]
    assert all(p["toggle"]["name"].startswith("Switch to") for p in palettes)
    assert config["repo_url"].startswith("https://") and config["repo_name"]
    css = [os.path.join(ROOT, "docs", path) for path in config["extra_css"]]
    assert any("white-space: pre-wrap" in open(path, encoding="utf-8").read() for path in css)
    assert _docstring_options(config)["returns_multiple_items"] is False
    assert config["hooks"] == ["docs/hooks.py"]


def test_the_version_hook_puts_pyproject_s_version_in_the_header_and_footer():
    spec = importlib.util.spec_from_file_location("docs_hooks", os.path.join(ROOT, "docs", "hooks.py"))
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    version = _pyproject()["project"]["version"]
    assert hooks.project_version(ROOT) == version

    class Config:
        config_file_path = os.path.join(ROOT, "mkdocs.yml")
        site_name = "hf-memory"
        copyright = None

    config = hooks.on_config(Config())
    assert config.site_name == f"hf-memory {version}" and version in config.copyright


def _extras_table(path: str) -> list[list[str]]:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read()
    start = text.index("| extra | for | installs |")
    lines = text[start:].split("\n\n", 1)[0].splitlines()[2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_the_extras_tables_of_the_readme_and_getting_started_agree_with_pyproject():
    readme, getting_started = _extras_table("README.md"), _extras_table("docs/getting_started.md")
    assert readme == getting_started
    extras = _pyproject()["project"]["optional-dependencies"]
    named = [name.strip("` ") for row in readme for name in row[0].split(",")]
    assert sorted(named) == sorted(extras)  # every extra once, nothing else

    def package(requirement: str) -> str:
        return re.split(r"[<>=!\[ ;]", requirement, maxsplit=1)[0].lower()

    for row in readme:
        names = [name.strip("` ") for name in row[0].split(",")]
        if names == ["all"]:
            continue
        listed = re.sub(r"\(and the .*\)", "", row[2])  # "(and the `docs`, `spaces` extras)": named, not packages
        installs = [p.strip().lower() for part in listed.split(";") for p in part.split(",") if p.strip()]
        required = {package(r) for name in names for r in extras[name]}
        assert set(installs) <= required, (names, set(installs) - required)


@pytest.mark.slow
def test_the_built_site_needs_no_server_and_no_network(tmp_path):
    """`mkdocs build --strict`, then what a reader opening it from disk gets: the search index as a script, the shim
    on every page, no script, stylesheet or font from the network, no docstring example rendered as quotes."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    assert (site / "search" / "search_index.js").read_text(encoding="utf-8").startswith("var __index = ")
    pages = [p for p in site.rglob("*.html") if "assets" not in p.parts]
    assert len(pages) > 30
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert "iframe-worker-shim.js" in html, page
        external = re.findall(r'<(?:script|link)[^>]+(?:src|href)="((?:https?:)?//[^"]+)"', html)
        assert external == [], (page, external)
        if page.parent.name == "api":
            assert "<blockquote>" not in html, page


def test_the_repository_address_is_the_same_everywhere():
    """pyproject.toml's `Repository` is where README's clone and install lines and the site's link point."""
    address = _pyproject()["project"]["urls"]["Repository"]
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert f"git clone {address}" in readme and f"git+{address}" in readme
    assert set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", readme)) == {address}
    mkdocs = open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8").read()
    assert f"repo_url: {address}\n" in mkdocs
