"""``steam-train plugin package``: build the two Dify plugins (``.difypkg``) from their shipped sources.

A model provider and a tool may not share one package (the plugin daemon refuses the install), so
the persona ships as two plugins: the chat model provider (``manifest.yaml`` at the repo root,
sources in ``plugin/chat/``) and the review tool (``plugin/review/``). :data:`PACKAGES` is the one
table of what goes where. Each plugin folder is laid out like Dify's own (``main.py``,
``provider/``, ``models/`` or ``tools/``, ``pyproject.toml`` + ``uv.lock``, its tests beside it);
two shared files are copied to the root of both packages: ``common/persona.py`` (the prompt format
and the persona: one definition, also used by train, export and serve) and
``plugin/common/server_client.py`` (HTTP to the server). Copied at package time rather than kept
in each folder, because a committed copy per plugin would be two more persona definitions to keep
equal with training, and symlinks break in Windows checkouts. Paths are the repository's; an
installed steam-persona holds the same files as package data
(:func:`steam_persona.resources.shipped`), so the command works from any folder.

Before writing, each staged package is checked against the daemon's rules (langgenius/
dify-plugin-daemon ``pkg/entities/plugin_entities/plugin_declaration.go`` and the package decoder):
manifest regexes and required fields, icons present in ``_assets/``, referenced YAML and Python
present, model-vs-tool exclusivity, ≤ 50 MiB; and no shipped module may import one left out. The zip holds file entries only, sorted, with
forward slashes, ``manifest.yaml`` at the root, deflated, and a fixed timestamp so that the same
sources give the same bytes. Unsigned, it has no zip comment; with ``--sign KEY`` it gets the
daemon's verification entry last and a signature comment (:mod:`steam_persona.plugin.sign`), so only
the comment differs between two signed builds. ``plugin keygen`` and ``plugin verify`` make keys
and check packages.

Why our own packager instead of the Dify CLI (``dify plugin package``): it is a Go binary outside
PyPI, it cannot merge the shared modules in, and its checks run only at install time.
"""

from __future__ import annotations

import ast
import datetime
import gc
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pathspec
import yaml
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from steam_persona.common import config
from steam_persona.plugin import sign as plugin_sign
from steam_persona.common.config import arg
from steam_persona.common.console import summary_table
from steam_persona.common.errors import UserError
from steam_persona.common import atomic
from steam_persona.common.atomic import atomic_path
from steam_persona.resources import doc, shipped

#: Unpacked size limit of a package (the daemon's 50 MiB).
MAX_UNPACKED_BYTES = 50 * 1024 * 1024
#: Timestamp of every zip entry (reproducible packages; zip cannot store dates before 1980).
ZIP_DATE_TIME = (2025, 1, 1, 0, 0, 0)
#: What a plugin folder may ship (gitignore syntax, from the folder): the kinds of files a Dify plugin
#: is made of: every Python module (a module left out breaks the plugin's imports), its YAML, Dify's
#: ``readme/`` translations and the images of ``_assets/``. An allowlist of kinds, so that whatever
#: else lies there (``.env.local``, notes, logs) stays out.
IMAGE_TYPES = ("svg", "png", "jpg", "jpeg", "gif", "webp", "ico")
INCLUDE = ["*.py", "/manifest.yaml", "/pyproject.toml", "/uv.lock", "/requirements.txt", "/README.md",
           "/readme/*.md", "/PRIVACY.md", "/.env.example", *(f"/_assets/**/*.{t}" for t in IMAGE_TYPES),
           "/provider/**/*.yaml", "/models/**/*.yaml", "/tools/**/*.yaml"]
#: Never shipped, even when included: caches, virtualenvs, build outputs, tests, and secrets by their
#: usual names (never by a word such as "secret", which ordinary module names may hold).
ALWAYS_EXCLUDE = ["__pycache__/", "*.py[cod]", ".venv/", "venv/", ".*_cache/", "build/", "dist/", "tests/",
                  "conftest.py", ".env", ".env.*", "!.env.example", "*.pem", "*.key"]

# Daemon rules (plugin_declaration.go, identity.go, manifest_entities tags).
# The daemon's regexes are Go's (RE2): \d and \w are ASCII only and $ is the end of the text, so
# re.ASCII and \Z here (Python's \d takes "١", its \w "日", its $ a trailing newline).
VERSION_RE = re.compile(r"^\d{1,4}(\.\d{1,4}){2}(-\w{1,16})?\Z", re.ASCII)
AUTHOR_RE = re.compile(r"^[a-z0-9_-]{1,64}\Z")
NAME_RE = re.compile(r"^[a-z0-9_-]{1,128}\Z")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\Z")
PLUGIN_TAGS = {"search", "image", "videos", "weather", "finance", "design", "travel", "social", "news",
               "medical", "productivity", "education", "business", "entertainment", "utilities", "agent",
               "rag", "other"}
ARCHES = {"amd64", "arm64"}
MANIFEST_SPEC_VERSION = "0.0.1"
#: Extension kinds a manifest may declare; a model provider excludes every other kind.
EXTENSION_KINDS = ("tools", "models", "endpoints", "agent_strategies", "datasources", "triggers")


@dataclass(frozen=True)
class Package:
    """One plugin: its manifest, its source folder and the files copied in from elsewhere.

    Attributes:
        key: short name (``chat`` / ``review``), the key of :func:`run`'s result.
        manifest: repo-relative path of its ``manifest.yaml`` (staged at the zip root).
        source: repo-relative folder whose files go to the zip root (minus ignored ones).
        extra: zip path → repo-relative source file, copied in (self-contained plugins).
    """

    key: str
    manifest: str
    source: str
    extra: tuple[tuple[str, str], ...]


_SHARED = (("persona.py", "common/persona.py"), ("server_client.py", "plugin/common/server_client.py"))
#: What goes where.
PACKAGES = (
    Package("chat", manifest="manifest.yaml", source="plugin/chat", extra=_SHARED),
    Package("review", manifest="plugin/review/manifest.yaml", source="plugin/review", extra=_SHARED),
)


def package(key: str) -> Package:
    """The entry of :data:`PACKAGES` named ``key`` (``"chat"`` / ``"review"``).

    Raises:
        UserError: no plugin has that name.
    """
    for pkg in PACKAGES:
        if pkg.key == key:
            return pkg
    raise UserError(f"{key!r} is not one of the plugins ({', '.join(p.key for p in PACKAGES)})")


@dataclass
class PackageConfig:
    """Settings of ``steam-train plugin package``."""

    out: str = arg("dist", "Folder for the .difypkg files (created).")
    version: str | None = arg(None, "Plugin version X.Y.Z written into both manifests (default: theirs).")
    sign: str | None = arg(None, "RSA-4096 private key (PEM) to sign both packages with, as the plugin daemon "
                                 "verifies them (make one with `steam-train plugin keygen`).")


@dataclass
class KeygenConfig:
    """Settings of ``steam-train plugin keygen``."""

    out: str = arg("keys", f"Folder for {plugin_sign.PRIVATE_NAME} (mode 0600) and {plugin_sign.PUBLIC_NAME}.")


@dataclass
class VerifyConfig:
    """Settings of ``steam-train plugin verify``."""

    packages: list[str] = arg([], "The .difypkg files to check.", positional=True)
    public_key: str | None = arg(None, f"The signer's public key ({plugin_sign.PUBLIC_NAME}, PEM RSA PUBLIC KEY).")


def _ignore_spec(source: Path) -> pathspec.GitIgnoreSpec:
    """Patterns of :data:`ALWAYS_EXCLUDE` + the folder's ``.difyignore`` (else ``.gitignore``),
    gitignore syntax (the daemon's packager reads the same files the same way; ours ships only
    :data:`INCLUDE` of them)."""
    lines = list(ALWAYS_EXCLUDE)
    for name in (".difyignore", ".gitignore"):
        f = source / name
        if f.is_file():
            lines += f.read_text(encoding="utf-8").splitlines()
            break
    return pathspec.GitIgnoreSpec.from_lines(lines)


def source_files(source: Path) -> tuple[list[str], list[str]]:
    """A plugin folder's files (relative, forward slashes, sorted) as ``(shipped, left_out)``:
    shipped = in :data:`INCLUDE` and not ignored (:func:`_ignore_spec`); left_out = the other
    files, caches, virtualenvs and the folder's own ``.difyignore`` not listed. A symlinked file counts as the file it points to
    (its target's bytes are shipped: the package holds no links).

    Raises:
        UserError: a symlink whose target does not exist.
    """
    include, ignore = pathspec.GitIgnoreSpec.from_lines(INCLUDE), _ignore_spec(source)
    cache = pathspec.GitIgnoreSpec.from_lines(["__pycache__/", "*.py[cod]", ".venv/", ".*_cache/"])
    shipped, left_out = [], []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source).as_posix()
        if path.is_dir() or cache.match_file(rel) or rel == ".difyignore":
            continue
        if not path.exists():
            raise UserError(f"{path}: a symlink to {os.readlink(path)}, which does not exist; fix or delete the link")
        (shipped if include.match_file(rel) and not ignore.match_file(rel) else left_out).append(rel)
    return shipped, left_out


def _imported(tree: ast.AST, package: list[str]) -> set[str]:
    """Absolute module names a module's code imports, with each ``from M import N`` also as ``M.N``;
    relative imports resolved against ``package`` (the importing module's package, as parts) by
    Python's rule (``level`` dots: that package, then one parent per further dot)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level > len(package):  # beyond the plugin root: Python refuses it at import
                continue
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module:
                names.add(module)
                names.update(f"{module}.{a.name}" for a in node.names)
    return names


def _parse(data: bytes, arc: str) -> ast.Module:
    """``ast.parse`` with the garbage collector paused. CPython before 3.11.8 keeps the AST builder's
    recursion count per interpreter (gh-106905): a collection's finalizers can hand the GIL to a thread
    that parses too, and the first parse then fails with a spurious "AST constructor recursion depth
    mismatch" SystemError (seen in the test suite, with a server thread beside it).

    Raises:
        SyntaxError: ``data`` is not valid Python.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(data, filename=arc)
    finally:
        if paused:
            gc.enable()


def _check_imports(files: dict[str, bytes], left_out: list[str], source: Path) -> None:
    """Refuse a package whose shipped code imports a module of its folder that stays out (by
    ``.difyignore`` or :data:`ALWAYS_EXCLUDE`): the plugin would fail at start with ModuleNotFoundError.

    Raises:
        UserError: naming the importing file, the module and the file left out.
    """
    modules = {rel[: -len(".py")].removesuffix("/__init__").replace("/", "."): rel
               for rel in left_out if rel.endswith(".py")}
    for arc, data in files.items():
        if not arc.endswith(".py") or not modules:
            continue
        try:
            tree = _parse(data, arc)
        except SyntaxError as e:
            raise UserError(f"{source / arc}: line {e.lineno}: invalid Python ({e.msg}); fix it") from None
        package = arc.split("/")[:-1]
        missing = sorted(_imported(tree, package) & modules.keys())
        if missing:
            raise UserError(f"{source / arc}: imports {missing[0]}, but {modules[missing[0]]} is left out of the"
                            f" package (.difyignore, or tests/ and caches); ship it or drop the import")


def _path(rel: str, repo: Path | None) -> Path:
    return repo / rel if repo is not None else shipped(rel)


def stage(pkg: Package, repo: Path | None = None, version: str | None = None) -> dict[str, bytes]:
    """Collect one package's files in memory: zip path (forward slashes) → bytes.

    ``repo``: a folder laid out like the repository to read instead of the shipped sources.

    Raises:
        UserError: the manifest, the source folder or a copied-in file is missing, or ``version``
            does not match the daemon's version rule.
    """
    manifest = _path(pkg.manifest, repo)
    source = _path(pkg.source, repo)
    if not manifest.is_file() or not source.is_dir():
        raise UserError(f"{manifest if not manifest.is_file() else source}: plugin sources not found; "
                        f"reinstall steam-persona (they are part of the package) or restore the file")
    shipped_files, left_out = source_files(source)
    files = {rel: (source / rel).read_bytes() for rel in shipped_files}
    _check_imports(files, left_out, source)
    for arc, src in pkg.extra:
        f = _path(src, repo)
        if not f.is_file():
            raise UserError(f"{f}: missing; it is copied into the {pkg.key} plugin as {arc}")
        files[arc] = f.read_bytes()
    text = manifest.read_text(encoding="utf-8")
    if version is not None:
        if not VERSION_RE.match(version):
            raise UserError(f"--version {version!r}: must look like 1.2.3 (or 1.2.3-beta1); fix the flag")
        text, n = re.subn(r"(?m)^version:.*$", f"version: {version}", text, count=1)
        if not n:
            text = f"version: {version}\n" + text
    files["manifest.yaml"] = text.encode("utf-8")
    return files


def _yaml(files: dict[str, bytes], name: str, where: str) -> dict:
    if name not in files and str(name).endswith(".yml"):
        raise UserError(f"{where}: references {name}; plugin YAML files must end in .yaml (only those are"
                        f" shipped): rename it to {str(name)[:-4]}.yaml and fix the reference")
    if name not in files:
        raise UserError(f"{where}: references {name}, which is not in the package; add it or fix the path")
    try:
        data = yaml.safe_load(files[name].decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{name}: invalid YAML ({e}); fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"{name}: must be a YAML mapping")
    return data


def _i18n(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not str(value.get("en_US") or "").strip():
        raise UserError(f"{where}: needs a non-empty en_US text (an i18n object: en_US, zh_Hans, ...)")


def _asset(files: dict[str, bytes], icon: Any, where: str) -> None:
    name = icon.get("en_US") if isinstance(icon, dict) else icon
    if name and f"_assets/{name}" in files:
        return
    if name and str(name).rsplit(".", 1)[-1].lower() not in IMAGE_TYPES:
        raise UserError(f"{where}: icon {name!r} is not an image type Dify shows ({', '.join(IMAGE_TYPES)});"
                        f" convert it or fix the name")
    raise UserError(f"{where}: icon {name!r} is not in _assets/; add the file or fix the name")


def validate(files: dict[str, bytes], label: str = "plugin") -> dict:
    """Check a staged package against the plugin daemon's rules; return the parsed manifest.

    Checks: ``version``/``author``/``name`` regexes (author not a UUID), ``type: plugin``, i18n
    ``label``/``description``, icons in ``_assets/``, ``resource.memory`` > 0, ``meta`` (spec
    0.0.1, arch, python runner with its entrypoint module), RFC 3339 ``created_at``, tags, privacy
    file, a dependency file, referenced provider/tool YAML and their Python sources, a model
    provider alone, ≤ 50 MiB.

    Raises:
        UserError: ``"<label> manifest.yaml: <field>: <problem>; <fix>"``.
    """
    where = f"{label} manifest.yaml"
    m = _yaml(files, "manifest.yaml", label)
    _validate_identity(files, m, where)
    _validate_runner(files, m, where)
    if "requirements.txt" not in files and "pyproject.toml" not in files:
        raise UserError(f"{label}: requirements.txt is missing; the daemon installs the plugin from it")
    _validate_extensions(files, m, where)
    size = sum(len(b) for b in files.values())
    if size > MAX_UNPACKED_BYTES:
        raise UserError(f"{label}: {size / 2**20:.1f} MiB unpacked, over the daemon's 50 MiB; "
                        f"list large files in .difyignore")
    return m


def _validate_identity(files: dict[str, bytes], m: dict, where: str) -> None:
    """Who the plugin is and how Dify shows it: version, type, author, name, texts, icons, tags, privacy."""
    version = str(m.get("version") or "")
    if not VERSION_RE.match(version):
        raise UserError(f"{where}: version {version!r} must look like 1.2.3 (regex {VERSION_RE.pattern})")
    if m.get("type") != "plugin":
        raise UserError(f"{where}: type must be 'plugin', not {m.get('type')!r}")
    author = str(m.get("author") or "")
    if not AUTHOR_RE.match(author):
        raise UserError(f"{where}: author {author!r} must be 1-64 of a-z 0-9 _ - (lowercase); fix it")
    if UUID_RE.match(author):
        raise UserError(f"{where}: author {author!r} looks like a UUID, which the daemon reserves; pick a name")
    name = str(m.get("name") or "")
    if not NAME_RE.match(name):
        raise UserError(f"{where}: name {name!r} must be 1-128 of a-z 0-9 _ - (lowercase); fix it")
    for key in ("label", "description"):
        _i18n(m.get(key), f"{where}: {key}")
    _asset(files, m.get("icon"), f"{where}: icon")
    if m.get("icon_dark"):
        _asset(files, m["icon_dark"], f"{where}: icon_dark")
    created = m.get("created_at")
    if isinstance(created, str):
        try:
            datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            created = None
    if not isinstance(created, (str, datetime.datetime)):
        raise UserError(f"{where}: created_at must be an RFC 3339 time, e.g. 2026-01-01T00:00:00Z")
    bad_tags = [t for t in m.get("tags") or [] if t not in PLUGIN_TAGS]
    if bad_tags:
        raise UserError(f"{where}: unknown tags {bad_tags}; use {', '.join(sorted(PLUGIN_TAGS))}")
    if m.get("privacy") and m["privacy"] not in files:
        raise UserError(f"{where}: privacy file {m['privacy']!r} is not in the package")


def _validate_runner(files: dict[str, bytes], m: dict, where: str) -> None:
    """How the daemon runs it: ``resource.memory`` and ``meta`` (spec version, arch, python runner)."""
    resource = m.get("resource") or {}
    if not isinstance(resource.get("memory"), int) or resource["memory"] <= 0:
        raise UserError(f"{where}: resource.memory must be a positive number of bytes, e.g. 268435456")
    meta = m.get("meta") or {}
    if str(meta.get("version")) != MANIFEST_SPEC_VERSION:
        raise UserError(f"{where}: meta.version must be {MANIFEST_SPEC_VERSION} (the manifest spec version), "
                        f"not {meta.get('version')!r}")
    arch = meta.get("arch")
    if not isinstance(arch, list) or not arch or not set(arch) <= ARCHES:
        raise UserError(f"{where}: meta.arch must list amd64 and/or arm64, not {arch!r}")
    runner = meta.get("runner") or {}
    if runner.get("language") != "python" or not str(runner.get("version") or "") or not runner.get("entrypoint"):
        raise UserError(f"{where}: meta.runner needs language: python, version: \"3.12\", entrypoint: main")
    if f"{runner['entrypoint']}.py" not in files:
        raise UserError(f"{where}: meta.runner.entrypoint {runner['entrypoint']!r} has no "
                        f"{runner['entrypoint']}.py in the package")


def _validate_extensions(files: dict[str, bytes], m: dict, where: str) -> None:
    """What it provides: ``plugins`` declares something, a model provider alone, each YAML and its sources."""
    plugins = m.get("plugins") or {}
    declared = {k: list(plugins.get(k) or []) for k in EXTENSION_KINDS}
    if not any(declared.values()):
        raise UserError(f"{where}: plugins declares nothing; add models: or tools: with a provider YAML")
    others = [k for k in EXTENSION_KINDS if k != "models" and declared[k]]
    if declared["models"] and others:
        raise UserError(f"{where}: a model provider and {', '.join(others)} cannot be provided at the same time "
                        f"(the daemon refuses the install); ship them as two plugins")
    for kind, paths in declared.items():
        for p in paths:
            if len(p) > 128:
                raise UserError(f"{where}: plugins.{kind} path {p!r} is longer than 128 characters")
            provider = _yaml(files, p, f"{where}: plugins.{kind}")
            if kind == "models":
                _validate_model_provider(files, p, provider)
            elif kind == "tools":
                _validate_tool_provider(files, p, provider)


def _python_source(files: dict[str, bytes], path: Any, where: str) -> None:
    if not isinstance(path, str) or path not in files:
        raise UserError(f"{where}: Python source {path!r} is not in the package")


def _validate_model_provider(files: dict[str, bytes], name: str, p: dict) -> None:
    if not re.match(r"^[a-z0-9_-]+\Z", str(p.get("provider") or "")):
        raise UserError(f"{name}: provider must be a lowercase name, not {p.get('provider')!r}")
    _i18n(p.get("label"), f"{name}: label")
    _asset(files, p.get("icon_small"), f"{name}: icon_small")
    if not p.get("supported_model_types") or not p.get("configurate_methods"):
        raise UserError(f"{name}: needs supported_model_types and configurate_methods")
    py = ((p.get("extra") or {}).get("python") or {})
    _python_source(files, py.get("provider_source"), f"{name}: extra.python.provider_source")
    for src in py.get("model_sources") or []:
        _python_source(files, src, f"{name}: extra.python.model_sources")


def _validate_tool_provider(files: dict[str, bytes], name: str, p: dict) -> None:
    identity = p.get("identity") or {}
    for key in ("author", "name"):
        if not identity.get(key):
            raise UserError(f"{name}: identity.{key} is required")
    _i18n(identity.get("label"), f"{name}: identity.label")
    _asset(files, identity.get("icon"), f"{name}: identity.icon")
    creds = p.get("credentials_for_provider")
    if creds is not None and not isinstance(creds, dict):
        raise UserError(f"{name}: credentials_for_provider must be a mapping name → {{type, required, label}}")
    _python_source(files, ((p.get("extra") or {}).get("python") or {}).get("source"), f"{name}: extra.python.source")
    for tool_path in p.get("tools") or []:
        tool = _yaml(files, tool_path, f"{name}: tools")
        _python_source(files, ((tool.get("extra") or {}).get("python") or {}).get("source"),
                       f"{tool_path}: extra.python.source")
        for param in tool.get("parameters") or []:
            if not (param.get("human_description") or {}).get("en_US"):
                raise UserError(f"{tool_path}: parameter {param.get('name')!r}: human_description.en_US is required")


def write_difypkg(files: dict[str, bytes], out: Path, key: RSAPrivateKey | None = None,
                  signed_at: int | None = None) -> Path:
    """Write ``files`` as a ``.difypkg`` (atomic: temp file, then rename) and return ``out``.

    File entries only, sorted, forward slashes, deflate, fixed timestamp, mode 0644. Unsigned
    (``key`` None): no comment. Signed: :data:`plugin_sign.VERIFICATION_FILE` as the last entry and
    the signature (made at ``signed_at`` Unix seconds, default now) as the zip comment.
    """
    entries = [(name, files[name]) for name in sorted(files)]
    if key is not None:
        entries.append((plugin_sign.VERIFICATION_FILE, plugin_sign.VERIFICATION))
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o100644 << 16
                z.writestr(info, data)
            if key is not None:
                when = int(time.time()) if signed_at is None else signed_at
                z.comment = plugin_sign.sign((data for _, data in entries), key, when)
    return out


def run(cfg: PackageConfig) -> dict[str, Path]:
    """Stage, validate and write both plugins.

    Returns:
        ``{"chat": dist/steam_persona-X.Y.Z.difypkg, "review": dist/steam_persona_review-X.Y.Z.difypkg}``.

    Raises:
        UserError: a package breaks a daemon rule (nothing is written then) or sources are missing.
    """
    key = plugin_sign.load_private_key(cfg.sign) if cfg.sign else None
    out_folder(cfg.out, create=False)  # a bad --out stops before any work
    staged = []
    for pkg in PACKAGES:
        files = stage(pkg, version=cfg.version)
        manifest = validate(files, f"{pkg.key} plugin ({pkg.manifest})")
        staged.append((pkg, files, manifest))
    out_dir = out_folder(cfg.out)
    result: dict[str, Path] = {}
    rows = []
    paths = [out_dir / f"{manifest['name']}-{manifest['version']}.difypkg" for _, _, manifest in staged]
    atomic.note_removed([p for path in paths for p in atomic.remove_stale(path)])
    for (pkg, files, manifest), path in zip(staged, paths):
        try:
            write_difypkg(files, path, key)
        except OSError as e:
            raise UserError(f"{path}: cannot be written ({e.strerror or e}); pick another --out") from None
        result[pkg.key] = path
        rows.append((f"{pkg.key}: {manifest['author']}/{manifest['name']} {manifest['version']}",
                     f"{path}  ({len(files) + (key is not None)} files, {path.stat().st_size / 1024:.1f} KiB)"))
        left_out = source_files(shipped(pkg.source))[1]
        if left_out:
            rows.append((f"{pkg.key}: left out (not plugin files)", ", ".join(left_out[:6])
                         + (f" and {len(left_out) - 6} more" if len(left_out) > 6 else "")))
    how = ("signed: the daemon needs THIRD_PARTY_SIGNATURE_VERIFICATION_* with your public key" if key else
           "unsigned: sign with --sign KEY, or turn FORCE_VERIFYING_SIGNATURE off")
    summary_table("Dify plugins", rows + [("install", f"Dify → Plugins → Install from local package file; "
                                                      f"{how} ({doc('dify.md')})")])
    return result


def out_folder(out: str, create: bool = True) -> Path:
    """The ``--out`` folder, created when ``create``.

    Raises:
        UserError: empty, an existing file (or below one), or not creatable (permissions, read-only).
    """
    if not str(out).strip():
        raise UserError("--out is empty; give a folder, e.g. --out dist")
    path = Path(out)
    if path.is_file():
        raise UserError(f"--out {out}: is a file, not a folder; pick another --out")
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--out {out}: is a file, not a folder; pick another --out") from None
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror or e}); pick another --out") from None
    return path


def keygen(cfg: KeygenConfig) -> tuple[Path, Path]:
    """Write a new RSA-4096 signing pair (:func:`plugin_sign.keygen`); print the paths, never the key.

    Raises:
        UserError: ``--out`` is unusable (:func:`out_folder`) or cannot be written, or a pair is there.
    """
    out = out_folder(cfg.out)
    try:
        private, public = plugin_sign.keygen(out)
    except OSError as e:
        raise UserError(f"--out {cfg.out}: the key pair cannot be written ({e.strerror or e}); pick another --out"
                        ) from None
    summary_table("Plugin signing key", [("private (keep secret, mode 0600)", private),
                                         ("public (for the plugin daemon)", public),
                                         ("sign", f"steam-train plugin package --sign {private}")])
    return private, public


def verify(cfg: VerifyConfig) -> dict[str, int]:
    """Check each package's signature against ``cfg.public_key``, as the daemon does.

    Returns:
        package path → signing time (Unix seconds).

    Raises:
        UserError: no package or key given; any package is missing, a folder, unsigned or badly
            signed (after every package is checked and listed).
    """
    if not cfg.packages:
        raise UserError("plugin verify: no package given; pass the .difypkg files to check")
    if not cfg.public_key:
        raise UserError("plugin verify: missing --public_key; give the signer's .public.pem")
    key = plugin_sign.load_public_key(cfg.public_key)
    result: dict[str, int] = {}
    rows, bad = [], []
    for p in cfg.packages:
        try:
            if Path(p).is_dir():
                raise UserError(f"{p}: a folder, not a .difypkg file")
            result[p] = plugin_sign.verify(p, key)
            when = datetime.datetime.fromtimestamp(result[p], datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            rows.append((p, f"good, signed {when}"))
        except UserError as e:
            bad.append(str(e))
            rows.append((p, f"BAD: {e}"))
    if len(bad) == len(cfg.packages) == 1:
        raise UserError(bad[0])
    summary_table("Signatures", rows)
    if bad:
        raise UserError(f"{len(bad)} of {len(cfg.packages)} packages failed the check; the first: {bad[0]}")
    return result


@click.group(name="plugin", help="Build, sign and verify the Dify plugins (chat model provider + review tool).")
def group() -> None:
    """``steam-train plugin``: sub-commands for the Dify plugins."""


group.add_command(config.command(
    PackageConfig, run, name="package", config_option="option",
    help="Write the two Dify plugins (.difypkg): the persona as a chat model provider and the "
         "write_steam_review tool, signed with --sign KEY. Install them in Dify: Plugins → Install from "
         "local package file."))
group.add_command(config.command(
    KeygenConfig, keygen, name="keygen", config_option="none",
    help="Write an RSA-4096 key pair (PEM) for signing the plugins; the private key is mode 0600."))
group.add_command(config.command(
    VerifyConfig, verify, name="verify", config_option="none",
    help="Check packages' signatures as the plugin daemon does; exit 2 if one is unsigned or bad."))
