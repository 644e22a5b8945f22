"""The house: public names, lazy imports, optional extras, the import rules between capabilities, the templates."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import warnings

import pytest

import hf_memory


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "hf_memory")

# Every name `hf_memory` exported in 0.1.0: each must stay importable from the top level.
NAMES_IN_0_1 = [
    "ActivationStatistics", "CEDiagnosticResult", "EXTRACTABLE_MEMORIZATION", "ExtractionResult", "FastMem",
    "FastMemCallback", "FastMemConfig", "GOLDFISH_STRATEGIES", "GoldfishConfig", "GoldfishDataCollator",
    "GoldfishSFTConfig", "GoldfishSFTTrainer", "GoldfishTrainer", "GoldfishTrainingArguments", "LatentScanResult",
    "MemorizationPredictor", "MemorizationSignals", "MemorizedPrompt", "NEMO_HOOK", "NeMoConfig", "NeMoResult",
    "NgramCounts", "PredictorReport", "RepresentationSimilarity", "__version__", "apply_goldfish", "apply_nemo",
    "ce_diagnostic", "compute_activation_statistics", "context_as_assistant_turn", "default_model_path",
    "extraction_labels", "fastmem_generate", "goldfish_mask", "last_ffn_lora_config", "last_ffn_modules",
    "latent_memorization_scan", "load_model", "localize_memorization_neurons", "measure_extraction",
    "memorization_score", "memorization_signals", "ngram_counts", "remove_nemo", "representation_similarity",
    "stdlib_docstrings", "token_entropy", "value_activations", "value_projection_names",
]  # fmt: skip

# Every subpackage but the shared ground floor (`_utils`) and the metric folders (evaluate's layout): listed from
# the package, so a new capability is checked without being added here.
CAPABILITIES = tuple(
    sorted(
        name
        for name in os.listdir(PACKAGE)
        if os.path.isfile(os.path.join(PACKAGE, name, "__init__.py")) and name not in ("_utils", "metrics")
    )
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("name", NAMES_IN_0_1)
def test_every_0_1_name_is_still_importable(name):
    assert getattr(hf_memory, name) is not None
    assert name == "__version__" or name in hf_memory.__all__


def test_all_lists_only_importable_names_and_dir_shows_them():
    for name in hf_memory.__all__:
        assert getattr(hf_memory, name) is not None, name
    assert set(hf_memory.__all__) <= set(dir(hf_memory))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        hf_memory.not_a_name  # noqa: B018


def test_type_checking_block_names_every_lazy_name():
    """IDEs and type checkers read the TYPE_CHECKING imports: they must cover the whole lazy map."""
    tree = ast.parse(open(os.path.join(PACKAGE, "__init__.py")).read())
    block = next(
        node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    )
    imported = {alias.name for node in ast.walk(block) if isinstance(node, ast.ImportFrom) for alias in node.names}
    lazy = {name for names in hf_memory._LAZY.values() for name in names}
    assert imported == lazy


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    assert hf_memory.__version__ == version("hf-memory")


def test_renamed_nemo_score_warns_and_is_the_new_function():
    from hf_memory.nemo import nemo_memorization_score

    assert hf_memory.nemo_memorization_score is nemo_memorization_score
    with pytest.raises(FutureWarning, match="nemo_memorization_score"), warnings.catch_warnings():
        warnings.simplefilter("error")
        hf_memory.memorization_score(object(), "a prompt")


def test_import_is_lazy():
    """`import hf_memory` loads no capability, no Trainer, TRL, diffusers or evaluate; FastMem loads neither
    evaluate nor datasets."""
    done = run_python(
        "import sys, hf_memory\n"
        "heavy = ('trl', 'diffusers', 'evaluate', 'datasets', 'sklearn', 'matplotlib', 'hf_memory.goldfish')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "from hf_memory import FastMem\n"
        "print(sorted(m for m in ('evaluate', 'datasets', 'diffusers', 'trl') if m in sys.modules))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "[]"]


def test_the_extraction_capability_loads_neither_evaluate_nor_datasets():
    """The scores live in the capability; the metric folder wraps them (it once lived the other way round, and
    `from hf_memory import measure_extraction` loaded evaluate and datasets through the metric script)."""
    done = run_python(
        "import sys\n"
        "import hf_memory.extraction\n"
        "from hf_memory import measure_extraction, extraction_scores, MemorizationCallback\n"
        "print(sorted(m for m in ('evaluate', 'datasets') if m in sys.modules))\n"
        "print(sorted(m for m in sys.modules if m.startswith('hf_memory.metrics.')))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "[]"]


METRIC_FOLDERS = sorted(
    name
    for name in os.listdir(os.path.join(PACKAGE, "metrics"))
    if os.path.isfile(os.path.join(PACKAGE, "metrics", name, f"{name}.py"))
)


def test_metric_folders_are_adapters_importing_their_capability():
    """The dependency runs one way, metric folder -> capability: no module of the package imports a metric folder
    (`hf_memory.metrics` itself only holds their paths), and each metric script reaches hf_memory only through a
    capability."""
    assert METRIC_FOLDERS == ["extractable_memorization", "graph_reasoning", "membership_inference"]
    backwards = []
    for folder, _, files in os.walk(PACKAGE):
        if os.path.relpath(folder, PACKAGE).split(os.sep)[0] == "metrics":
            continue
        for file in (f for f in files if f.endswith(".py")):
            for module, names in _imports(os.path.join(folder, file)):
                targets = [module] + [f"{module}.{name}" for name in names]
                if any(t.startswith(f"hf_memory.metrics.{m}") for t in targets for m in METRIC_FOLDERS):
                    backwards.append(f"{os.path.relpath(os.path.join(folder, file), ROOT)}: {module}")
    assert backwards == []
    for name in METRIC_FOLDERS:
        script = os.path.join(PACKAGE, "metrics", name, f"{name}.py")
        reached = {module for module, _ in _imports(script) if module.startswith("hf_memory")}
        assert reached and all(m.split(".")[1] in CAPABILITIES for m in reached), (name, reached)


@pytest.mark.parametrize("name", METRIC_FOLDERS)
def test_metric_folders_list_what_their_script_imports_in_requirements_txt(name):
    """A Space installs the folder's requirements.txt: every third-party module the script and the app import is
    named there (and pyproject ships the file with the package)."""
    import importlib.util

    folder = os.path.join(PACKAGE, "metrics", name)
    lines = open(os.path.join(folder, "requirements.txt"), encoding="utf-8").read().split()
    required = {re.split(r"[\[<>=!~ ]", line, maxsplit=1)[0].replace("-", "_") for line in lines}
    for file in (f"{name}.py", "app.py"):
        for module, _ in _imports(os.path.join(folder, file)):
            top = module.split(".")[0]
            if top != "__future__" and top not in sys.stdlib_module_names:
                assert top in required, f"{name}/requirements.txt lacks {top} ({file} imports it)"
                assert importlib.util.find_spec(top) is not None
    assert (
        f'"hf_memory.metrics.{name}" = ["README.md", "requirements.txt"]'
        in open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    )


MISSING_EXTRA_CASES = [  # (the module made missing, the public name that needs it, the extra that installs it)
    ("trl", "GoldfishSFTTrainer", "trl"),
    ("trl", "GoldfishSFTConfig", "trl"),
    ("diffusers", "apply_nemo", "diffusers"),
    ("torchmetrics", "localize_memorization_neurons", "diffusers"),
    ("rapidfuzz", "latent_memorization_scan", "analysis"),
    ("sklearn", "MemorizationPredictor", "analysis"),
]


@pytest.mark.slow  # a fresh interpreter (one for every case: 6 imports of transformers took 2.5 min of CI)
def test_a_missing_extra_names_the_install_command():
    """Each case in turn, in one fresh interpreter: its module made missing (`sys.modules[name] = None`, which makes
    an import fail as an uninstalled package does), the public name raises an ImportError naming the module and the
    extra; then the module is given back. A failed import leaves nothing in `sys.modules` or on `hf_memory`, so the
    next case starts as a fresh interpreter would; the core names work with every one of these modules missing."""
    done = run_python(
        "import sys\n"
        f"cases = {MISSING_EXTRA_CASES!r}\n"
        "blocked = sorted({case[0] for case in cases})\n"
        "for module in blocked:\n    sys.modules[module] = None\n"
        "import hf_memory\n"
        "from hf_memory import GoldfishTrainer, measure_extraction, FastMem, memorization_signals\n"  # still work
        "for module in blocked:\n    del sys.modules[module]\n"
        "for module, name, extra in cases:\n"
        "    sys.modules[module] = None\n"
        "    try:\n        getattr(hf_memory, name)\n    except ImportError as err:\n"
        "        print(name, '|', str(err).replace(chr(10), ' '))\n"
        "    else:\n        print(name, '| no error')\n"
        "    del sys.modules[module]\n"
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" | ", 1) for line in done.stdout.splitlines() if " | " in line)
    for module, name, extra in MISSING_EXTRA_CASES:
        assert f'pip install "hf-memory[{extra}]"' in lines[name] and module in lines[name], (name, lines[name])


def _imports(path: str) -> list[tuple[str, list[str]]]:
    """(module, names) of every `from ... import ...` in a file, with relative modules resolved."""
    tree = ast.parse(open(path).read())
    here = os.path.relpath(os.path.dirname(path), ROOT).replace(os.sep, ".")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
    return out


def test_capabilities_import_only_utils_and_public_names():
    """A capability imports `hf_memory._utils` and other capabilities' public names, never their private ones."""
    problems = []
    for capability in CAPABILITIES:
        folder = os.path.join(PACKAGE, capability)
        for file in sorted(f for f in os.listdir(folder) if f.endswith(".py")):
            for module, names in _imports(os.path.join(folder, file)):
                if not module.startswith("hf_memory.") or module.startswith(f"hf_memory.{capability}"):
                    continue
                parts = module.split(".")
                if parts[1] == "_utils":
                    continue
                if any(part.startswith("_") for part in parts[1:]) or any(name.startswith("_") for name in names):
                    problems.append(f"{capability}/{file}: from {module} import {', '.join(names)}")
    assert problems == []


def test_model_card_templates_live_in_the_package_and_model_cards_points_at_them():
    templates = os.path.join(PACKAGE, "templates")
    names = sorted(f for f in os.listdir(templates) if f.endswith(".md"))
    assert names
    for name in names:
        link = os.path.join(ROOT, "model_cards", name)
        assert os.path.realpath(link) == os.path.realpath(os.path.join(templates, name)), name


def _python_blocks(path: str) -> list[str]:
    """Every Python block: ```python, and ```{.python ...} with options (`notest`, `continuation`)."""
    text = open(path, encoding="utf-8").read()
    starts = re.split(r"(?m)^```(?:python|\{\.python)[^\n]*\n", text)[1:]
    return [block.split("```", 1)[0] for block in starts]


DOCS = [
    "README.md",
    "CONTRIBUTING.md",
    *(os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs"))) if f.endswith(".md")),
]


@pytest.mark.parametrize("doc", DOCS)
def test_doc_snippets_compile_and_their_hf_memory_imports_resolve(doc):
    """Every Python block parses, and every name it imports from hf_memory exists. pytest-markdown-docs runs the
    blocks of README.md and docs/ as well; this also covers the ones marked `notest` and CONTRIBUTING.md."""
    import importlib

    blocks = _python_blocks(os.path.join(ROOT, doc))
    for block in blocks:
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hf_memory"):
                module = importlib.import_module(node.module)
                missing = [alias.name for alias in node.names if not hasattr(module, alias.name)]
                assert missing == [], f"{doc}: from {node.module} import {missing}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("hf_memory"):
                        importlib.import_module(alias.name)


def test_every_public_name_has_a_place_in_the_api_reference():
    """`make docs` generates the API reference from explicit member lists (docs/api/*.md); a name added to
    `hf_memory.__all__` without an entry there would be missing from the reference without any warning."""
    api = os.path.join(ROOT, "docs", "api")
    text = "\n".join(open(os.path.join(api, f), encoding="utf-8").read() for f in os.listdir(api) if f.endswith(".md"))
    listed = set(re.findall(r"(?m)^ +- (\w+)$", text)) | set(re.findall(r"(?m)^::: [\w.]+\.(\w+)$", text))
    missing = sorted(set(hf_memory.__all__) - listed)
    assert missing == [], f"add these to a page in docs/api/: {missing}"
