"""mkdocs hook: the hf-memory version in the site's header and footer, read from pyproject.toml (the one place the
version is written), so the docs of a build say which release they describe."""

from __future__ import annotations

import os
import re


def project_version(root: str) -> str:
    """The `version` of `[project]` in `root/pyproject.toml`."""
    with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE).group(1)


def on_config(config):
    version = project_version(os.path.dirname(config.config_file_path))
    config.site_name = f"{config.site_name} {version}"
    config.copyright = f"hf-memory {version} · Apache-2.0"
    return config
