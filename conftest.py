"""Root pytest configuration: the documentation's Python blocks (README.md, docs/) run through pytest-markdown-docs,
each in its own temporary directory. The docs' blocks get the tiny stand-ins of `tests/snippets.py`; the README's
quick starts are whole programs on the embedded model, so they run as printed, with no name given to them, and are
marked slow."""

import os
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")

_README = Path(__file__).parent / "README.md"
_running_readme_block = False


def _is_readme_block(item) -> bool:
    return type(item).__name__ == "MarkdownInlinePythonItem" and Path(str(item.path)) == _README


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_readme_block(item):
            item.add_marker(pytest.mark.slow)


def pytest_markdown_docs_globals():
    if _running_readme_block:
        return {}
    from tests.snippets import snippet_globals

    return snippet_globals()


@pytest.fixture(autouse=True)
def _documentation_blocks_in_a_temporary_directory(request, tmp_path, monkeypatch):
    global _running_readme_block
    if type(request.node).__name__ == "MarkdownInlinePythonItem":
        _running_readme_block = _is_readme_block(request.node)
        monkeypatch.chdir(tmp_path)
        from tests.snippets import write_snippet_files

        write_snippet_files(tmp_path)
        torch = pytest.importorskip("torch")
        threads = torch.get_num_threads()
        if not _running_readme_block:  # the tiny stand-ins run faster on one thread; the embedded model does not
            torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)
        _running_readme_block = False
    else:
        yield
