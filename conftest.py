"""Root pytest configuration: the documentation's Python blocks (README.md, docs/) run through pytest-markdown-docs
with the tiny stand-ins of `tests/snippets.py`, each in its own temporary directory."""

import os

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_markdown_docs_globals():
    from tests.snippets import snippet_globals

    return snippet_globals()


@pytest.fixture(autouse=True)
def _documentation_blocks_in_a_temporary_directory(request, tmp_path, monkeypatch):
    if type(request.node).__name__ == "MarkdownInlinePythonItem":
        monkeypatch.chdir(tmp_path)
        from tests.snippets import write_snippet_files

        write_snippet_files(tmp_path)
        torch = pytest.importorskip("torch")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)
    else:
        yield
