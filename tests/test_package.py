"""The installable package: one import name, no import cycles, shipped data, and the real wheel
(``python -m build``, ``twine check``) installed into a fresh venv and run from an empty folder."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import steam_persona
from steam_persona.resources import doc, shipped
from steam_persona.demo_compare import PROMPTS
from steam_persona.plugin.package import PackageConfig, run

REPO = Path(steam_persona.__file__).resolve().parents[1]
#: Import groups, lowest first: a group may import only itself and the groups before it.
LAYERS = ("base", "common", "reviews", "trainer", "export", "serve", "plugin", "top")
#: The folders whose modules are checked (plugin/: the host-side packaging code; the plugins' own
#: sources are never imported by the package).
_STAGES = ("common", "reviews", "trainer", "export", "serve", "plugin")


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name → source file."""
    out = {}
    for folder, prefix in ((REPO / "steam_persona", "steam_persona"),
                           *((REPO / stage, f"steam_persona.{stage}") for stage in _STAGES)):
        for f in folder.glob("*.py"):
            out[prefix if f.stem == "__init__" else f"{prefix}.{f.stem}"] = f
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """Our modules imported anywhere in ``path`` (module level and inside functions alike)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in _STAGES:
        return parts[1]
    return "base" if module in ("steam_persona", "steam_persona.resources") else "top"


def test_no_import_cycles_between_packages_or_modules():
    mods = _modules()
    # a module's own parent packages are imported before it anyway: not an edge
    graph = {m: {d for d in _imports(p, set(mods)) if not (m + ".").startswith(d + ".")} for m, p in mods.items()}
    upward = sorted(f"{m} → {d}" for m, deps in graph.items() for d in deps
                    if LAYERS.index(_layer(d)) > LAYERS.index(_layer(m)))
    assert upward == []
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, f"import cycle: {' → '.join(path[path.index(d):] + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert {"steam_persona.cli", "steam_persona.demo", "steam_persona.trainer.train", "steam_persona.export.merge",
            "steam_persona.serve.app"} <= set(graph)


def test_shipped_files_resolve_in_the_checkout():
    assert shipped("manifest.yaml") == REPO / "manifest.yaml"
    assert shipped("plugin/review/manifest.yaml").is_file()
    assert shipped("examples/persona_reviews.json") == REPO / "examples" / "persona_reviews.json"
    assert shipped("common/persona.py").read_bytes() == (REPO / "common" / "persona.py").read_bytes()
    assert doc("dify.md") == str(REPO / "docs" / "dify.md")


def test_no_doc_installs_the_project_by_a_name_pypi_does_not_have():
    """Trial 37 (1): README and docs/gpu.md said `pip install 'steam-persona[gpu]'`; the project is not on PyPI,
    so pip found nothing (or would find a stranger's package under that name)."""
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    bad = [f"{p.name}:{n}" for p in docs for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if re.search(r"pip install ['\"]?steam[-_]persona\b", line)]
    assert not bad


def test_python_m_steam_persona_from_another_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "steam_persona", "--version"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"steam-train {steam_persona.__version__}"


# -- the real wheel ---------------------------------------------------------------------------------

def _fresh_venv(root: Path) -> Path:
    """A venv that sees this environment's installed packages (a .pth line, not its own copies) but
    not this checkout: ``steam_persona`` there can only come from the wheel installed into it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_steam_persona_test_deps.pth").write_text("\n".join(sorted(shared)) + "\n")
    return python


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    # sdist first, then the wheel built from the unpacked sdist (so a file missing from the sdist fails here)
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)],
                           check=True, capture_output=True, text=True, timeout=300)
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    wheel = next(dist.glob("steam_persona-*.whl"))
    python = _fresh_venv(tmp / "venv")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    "--ignore-installed", str(wheel)], check=True, capture_output=True, timeout=300)
    return {"wheel": wheel, "sdist": next(dist.glob("steam_persona-*.tar.gz")), "bin": tmp / "venv" / "bin",
            "cwd": tmp_path_factory.mktemp("empty"), "build_log": built.stdout + built.stderr}


def _run(env: dict[str, Path], *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    paths = [p for p in clean.pop("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    if paths:  # keep extra paths, never this checkout
        clean["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run([str(env["bin"] / args[0]), *args[1:]], cwd=env["cwd"], env=clean, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_wheel_holds_one_import_name_and_every_shipped_file(wheel_env):
    with zipfile.ZipFile(wheel_env["wheel"]) as z:
        names = set(z.namelist())
        top = z.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
        entry = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert top == ["steam_persona"]
    assert not [n for n in names if not n.startswith(("steam_persona/", "steam_persona-"))]
    assert "steam-train = steam_persona.cli:main" in entry
    tracked = subprocess.run(["git", "ls-files", "plugin", "examples", "docs", "manifest.yaml", "common", "reviews", "trainer", "export", "serve"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert len(tracked) > 60 and not [f for f in tracked if f"steam_persona/{f}" not in names]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", "/.env"))]


@pytest.mark.slow
def test_wheel_build_takes_the_plugin_folders_as_data_without_warnings(wheel_env):
    """Regression: setuptools warned "Package 'steam_persona.plugin.chat' is absent from the
    `packages` configuration" for every plugin subfolder (and reviews/lists)."""
    assert "Successfully built" in wheel_env["build_log"]
    assert "absent from the `packages` configuration" not in wheel_env["build_log"]
    with zipfile.ZipFile(wheel_env["wheel"]) as z:
        names = set(z.namelist())
    for key in ("chat", "review"):
        assert {f"steam_persona/plugin/{key}/{f}" for f in ("pyproject.toml", "uv.lock", ".difyignore", ".env.example",
                                                             "requirements.txt", "main.py")} <= names


@pytest.mark.slow
def test_wheel_runs_every_command_from_an_empty_folder(wheel_env, tmp_path):
    where = _run(wheel_env, "python", "-c", "import steam_persona.trainer as t; print(t.__file__)")
    assert where.returncode == 0, where.stderr
    assert str(wheel_env["bin"].parent) in where.stdout and str(REPO) not in where.stdout
    help_ = _run(wheel_env, "steam-train", "--help")
    assert help_.returncode == 0 and all(c in help_.stdout for c in ("collect", "train", "export", "serve", "plugin"))
    version = _run(wheel_env, "steam-train", "--version")
    assert version.stdout.strip() == f"steam-train {importlib.metadata.version('steam-persona')}"
    module = _run(wheel_env, "python", "-m", "steam_persona", "plugin", "--help")
    assert module.returncode == 0 and "keygen" in module.stdout and "verify" in module.stdout
    out = tmp_path / "pkgs"
    pkg = _run(wheel_env, "steam-train", "plugin", "package", "--out", str(out))
    assert pkg.returncode == 0, pkg.stderr
    here = run(PackageConfig(out=str(tmp_path / "here")))
    for key, path in here.items():  # the installed package data builds the very same bytes
        assert (out / path.name).read_bytes() == path.read_bytes(), key


@pytest.mark.slow
def test_wheel_runs_a_short_demo(wheel_env, tiny_llama_dir):
    """A short demo from the installed wheel: its embedded examples, the served model (``python -m
    steam_persona serve``) and the review plugin's client are all found as package data."""
    out = wheel_env["cwd"] / "demo_run"
    r = _run(wheel_env, "steam-train", "demo", "--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(out),
             "--max_steps", "1", "--cutoff_len", "64", "--quantization_bit", "0", "--quantization", "q8_0",
             "--max_new_tokens", "4", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "demo_summary.json").read_text(encoding="utf-8"))
    assert summary["train"]["train"] == 155 and summary["train"]["val"] == 17  # the 172 shipped English examples
    assert summary["export"]["verified"] == {"q8_0": True}
    assert [r["game"] for r in summary["reviews"]] == [g for g, _ in PROMPTS["en"]]
    dify_doc = re.search(r"\((\S+/docs/dify\.md)\)", summary["next_steps"][1]).group(1)
    assert Path(dify_doc).is_file() and str(REPO) not in dify_doc  # the wheel's own copy of the docs


def test_no_function_is_longer_than_sixty_lines():
    """Big jobs are recipes of small steps (docs/layout.md): no function or method of the package
    over 60 lines, docstring included (tests and bench are not the package)."""
    long = []
    for folder in ("steam_persona", *_STAGES):
        for path in (REPO / folder).rglob("*.py"):
            if "tests" in path.relative_to(REPO).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert long == []
