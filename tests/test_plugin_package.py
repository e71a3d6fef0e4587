"""``steam-train plugin package``: the daemon's zip and manifest rules; the plugins' own tests
(beside their sources) and their plain functions run in each packaged plugin's folder."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from xml.etree import ElementTree
from pathlib import Path

import pytest
from conftest import DEAD_PID
import yaml
from click.testing import CliRunner

from steam_persona.cli import main as cli
from steam_persona.common.errors import UserError
from steam_persona.plugin.call import PluginCallError, PluginCode
from steam_persona.plugin.package import MAX_UNPACKED_BYTES, PACKAGES, PackageConfig, run, source_files, stage, validate
from steam_persona.resources import shipped

FORBIDDEN_PREFIXES = ("trainer/", "export/", "serve/", "tests/", ".venv/", "build/", "dist/", ".git/")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return run(PackageConfig(out=str(tmp_path_factory.mktemp("dist")), version="1.2.3"))


def _staged(key: str) -> dict[str, bytes]:
    return stage(next(p for p in PACKAGES if p.key == key))


def _with_manifest(files: dict[str, bytes], **changes) -> dict[str, bytes]:
    m = yaml.safe_load(files["manifest.yaml"])
    m.update(changes)
    return {**files, "manifest.yaml": yaml.safe_dump(m, allow_unicode=True).encode()}


def test_two_packages_named_by_manifest(built):
    assert sorted(built) == ["chat", "review"]
    assert built["chat"].name == "steam_persona-1.2.3.difypkg"
    assert built["review"].name == "steam_persona_review-1.2.3.difypkg"


@pytest.mark.parametrize("key", ["chat", "review"])
def test_zip_follows_daemon_rules(built, key):
    with zipfile.ZipFile(built[key]) as z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        assert z.comment == b""  # unsigned: no signature comment
        assert names == sorted(names)
        assert all(not n.endswith("/") for n in names)  # file entries only
        assert all("\\" not in n and not n.startswith("/") for n in names)
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
        assert "manifest.yaml" in names and "main.py" in names and "requirements.txt" in names
        assert not [n for n in names if n.startswith(FORBIDDEN_PREFIXES)]
        assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".difypkg")) or n == ".env"]
        assert sum(i.file_size for i in infos) <= MAX_UNPACKED_BYTES
        assert any(n.startswith("_assets/") for n in names)
        manifest = yaml.safe_load(z.read("manifest.yaml"))
        assert manifest["version"] == "1.2.3"
        assert z.read("requirements.txt").decode().split() == ["dify_plugin==0.10.2"]
        # the one prompt format and the one HTTP client, byte for byte
        assert z.read("persona.py") == shipped("common/persona.py").read_bytes()
        assert z.read("server_client.py") == shipped("plugin/common/server_client.py").read_bytes()
        files = {n: z.read(n) for n in names}
    assert validate(files)["name"] == manifest["name"]


@pytest.mark.parametrize("key", ["chat", "review"])
def test_dependency_files_agree(built, key):
    """The daemon installs from pyproject.toml + uv.lock (uv sync --frozen), or from requirements.txt
    when a PyPI mirror is set: all three pin the same dify_plugin."""
    with zipfile.ZipFile(built[key]) as z:
        project = tomllib.loads(z.read("pyproject.toml").decode())["project"]
        lock = tomllib.loads(z.read("uv.lock").decode())
        requirements = z.read("requirements.txt").decode().split()
    assert project["dependencies"] == requirements == ["dify_plugin==0.10.2"]
    assert project["requires-python"] == ">=3.12"
    packages = {p["name"]: p for p in lock["package"]}
    root = packages[project["name"]]
    assert root["source"] == {"virtual": "."}
    assert root["metadata"]["requires-dist"] == [{"name": "dify-plugin", "specifier": "==0.10.2"}]
    assert packages["dify-plugin"]["version"] == "0.10.2"
    assert {"httpx", "requests"} <= {d["name"] for d in packages["dify-plugin"]["dependencies"]}


def test_chat_is_model_provider_and_review_is_tool(built):
    with zipfile.ZipFile(built["chat"]) as z:
        chat = yaml.safe_load(z.read("manifest.yaml"))
        provider = yaml.safe_load(z.read(chat["plugins"]["models"][0]))
    with zipfile.ZipFile(built["review"]) as z:
        review = yaml.safe_load(z.read("manifest.yaml"))
        tool = yaml.safe_load(z.read("tools/write_steam_review.yaml"))
    assert (chat["author"], chat["name"]) == ("steam-persona", "steam_persona")
    assert set(chat["plugins"]) == {"models"} and set(review["plugins"]) == {"tools"}
    assert provider["configurate_methods"] == ["customizable-model"]
    variables = {f["variable"]: f for f in provider["model_credential_schema"]["credential_form_schemas"]}
    assert variables["endpoint_url"]["default"] == "http://host.docker.internal:8000/v1"
    assert variables["api_key"]["type"] == "secret-input"
    assert variables["persona_system_prompt"]["default"] == "disabled"
    assert {"endpoint_model_name", "context_size", "max_tokens_to_sample"} <= set(variables)
    params = {p["name"]: p for p in tool["parameters"]}
    assert params["game_name"]["required"] is True
    assert [o["value"] for o in params["verdict"]["options"]] == ["auto", "recommend", "not_recommend"]
    assert [o["value"] for o in params["language"]["options"]] == ["zh", "en"]
    assert [o["value"] for o in params["length"]["options"]] == ["auto", "short", "medium", "long"]
    assert params["length"]["default"] == "auto"
    assert {"tags", "extra_instructions"} <= set(params)


def _endpoint_help(key: str) -> dict[str, str]:
    files = _staged(key)
    if key == "chat":
        provider = yaml.safe_load(files["provider/steam_persona.yaml"])
        forms = provider["model_credential_schema"]["credential_form_schemas"]
        return next(f for f in forms if f["variable"] == "endpoint_url")["help"]
    return yaml.safe_load(files["provider/steam_review.yaml"])["credentials_for_provider"]["endpoint_url"]["help"]


@pytest.mark.parametrize("key", ["chat", "review"])
def test_endpoint_url_help_names_query_string_and_proxy_basic_auth(key):
    """The form's help says a query string goes on every request and ``user:pass@`` is a proxy's basic auth."""
    help_ = _endpoint_help(key)
    assert "query string goes on every request" in help_["en_US"]
    assert "user:pass@" in help_["en_US"] and "reverse proxy" in help_["en_US"]
    assert "steam-train serve itself takes only the API key, as a Bearer token" in help_["en_US"]
    assert "查询字符串" in help_["zh_Hans"] and "反向代理" in help_["zh_Hans"] and "Bearer" in help_["zh_Hans"]


@pytest.mark.parametrize("key", ["chat", "review"])
def test_shipped_manifest_names_docs_by_url(key):
    """A docs page named in a packaged manifest's comments is a link, not a path the package does not hold."""
    text = _staged(key)["manifest.yaml"].decode()
    assert "docs/dify.md" in text
    assert not re.search(r"(?<!steam-persona/blob/main/)\bdocs/", text)


def test_same_sources_same_bytes(built, tmp_path):
    again = run(PackageConfig(out=str(tmp_path), version="1.2.3"))
    for key in ("chat", "review"):
        assert hashlib.sha256(again[key].read_bytes()).digest() == hashlib.sha256(built[key].read_bytes()).digest()


def _repo_copy(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for rel in ("manifest.yaml", "common/persona.py", "plugin"):
        src, dst = shipped(rel), repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, dst)
    return repo


def test_only_plugin_files_are_shipped(tmp_path):
    repo = _repo_copy(tmp_path)
    chat = repo / "plugin/chat"
    planted = {".env": "REMOTE_INSTALL_KEY=secret", ".env.local": "API_KEY=abc", "secrets.txt": "k17",
               "notes.md": "x", "debug.log": "x", "provider/client.pem": "x", "tools/x.key": "x",
               "models/llm/__pycache__/llm.cpython-312.pyc": "x", "tests/test_x.py": "x", "build/x.py": "x"}
    for rel, text in planted.items():
        (chat / rel).parent.mkdir(parents=True, exist_ok=True)
        (chat / rel).write_text(text)
    own = ["provider/helper.py", "helpers.py", "models/llm/sub/extra.py", "provider/api_secret.py",
           "tools/secret_santa.py", "readme/README_zh_Hans.md", "_assets/logo.jpg", "_assets/dark/icon.webp"]
    for rel in own:  # the plugin's own code and data: every module it may import, translations, images
        (chat / rel).parent.mkdir(parents=True, exist_ok=True)
        (chat / rel).write_text("x")
    files = stage(PACKAGES[0], repo)
    assert sorted(files) == sorted(own + [
        '.env.example', 'PRIVACY.md', 'README.md', '_assets/icon.svg', 'main.py', 'manifest.yaml', 'models/llm/llm.py',
        'persona.py', 'provider/steam_persona.py', 'provider/steam_persona.yaml', 'pyproject.toml',
        'requirements.txt', 'server_client.py', 'uv.lock'])
    (chat / ".difyignore").write_text("provider/helper.py\n")  # .difyignore still takes files out
    assert "provider/helper.py" not in stage(PACKAGES[0], repo)
    left_out = source_files(chat)[1]
    assert set(planted) - {"models/llm/__pycache__/llm.cpython-312.pyc"} <= set(left_out)


def test_a_module_the_code_imports_must_not_be_left_out(tmp_path):
    repo = _repo_copy(tmp_path)
    review = repo / "plugin/review"
    (review / "helpers.py").write_text("X = 1\n")
    tool = review / "tools/write_steam_review.py"
    tool.write_text(tool.read_text() + "\nfrom helpers import X\n")
    assert "helpers.py" in stage(PACKAGES[1], repo)  # shipped: every .py
    (review / ".difyignore").write_text("helpers.py\n")
    with pytest.raises(UserError, match=r"write_steam_review.py: imports helpers, but helpers.py is left out"):
        stage(PACKAGES[1], repo)


@pytest.mark.parametrize("line", ["from . import local", "from .local import X", "from . import local as other"])
def test_a_relative_import_of_a_left_out_module_is_refused_too(tmp_path, line):
    repo = _repo_copy(tmp_path)
    review = repo / "plugin/review"
    (review / "tools/local.py").write_text("X = 1\n")
    (review / "tools/__init__.py").write_text("")
    tool = review / "tools/write_steam_review.py"
    tool.write_text(tool.read_text() + f"\n{line}\n")
    (review / ".difyignore").write_text("tools/local.py\n")
    with pytest.raises(UserError, match=r"write_steam_review.py: imports tools.local, but tools/local.py is left out"):
        stage(PACKAGES[1], repo)


def test_a_symlinked_module_ships_its_targets_bytes_and_a_dangling_link_is_refused(tmp_path):
    repo = _repo_copy(tmp_path)
    review = repo / "plugin/review"
    (tmp_path / "linked_target.py").write_text("Y = 2\n")
    (review / "tools/linked.py").symlink_to(tmp_path / "linked_target.py")
    assert stage(PACKAGES[1], repo)["tools/linked.py"] == b"Y = 2\n"
    (tmp_path / "linked_target.py").unlink()
    with pytest.raises(UserError, match=r"tools/linked.py: a symlink to .*linked_target.py, which does not exist"):
        stage(PACKAGES[1], repo)


@pytest.mark.parametrize("field,value,needle", [
    ("author", "Steam-Persona", "author"),
    ("author", "a" * 65, "author"),
    ("author", "steam persona", "author"),
    ("author", "123e4567-e89b-12d3-a456-426614174000", "UUID"),
    ("name", "Steam_Persona", "name"),
    ("name", "x" * 129, "name"),
    ("name", "steam.persona", "name"),
    ("version", "1.0", "version"),
    ("version", "1.2.3.4", "version"),
    ("version", "\u0661.\u0660.\u0660", "version"),  # Arabic-Indic digits: Python's \d takes them, the daemon's not
    ("version", "1.0.0-\u65e5\u672c", "version"),  # a non-ASCII tag: likewise \w
    ("version", "1.0.0\n", "version"),  # Python's $ matches before a final newline, Go's does not
    ("author", "steam-persona\n", "author"),
    ("type", "bundle", "type"),
    ("meta", {"version": "0.1.0", "arch": ["amd64"], "runner": {"language": "python", "version": "3.12",
                                                                "entrypoint": "main"}}, "meta.version"),
    ("icon", "missing.svg", "icon"),
    ("tags", ["games"], "tags"),
    ("label", {"zh_Hans": "只有中文"}, "label"),
    ("resource", {"memory": 0}, "resource.memory"),
])
def test_manifest_rules_refuse(field, value, needle):
    files = _with_manifest(_staged("chat"), **{field: value})
    with pytest.raises(UserError, match=needle):
        validate(files, "chat")


def test_good_values_pass_the_regexes():
    for author, name in (("steam-persona", "steam_persona"), ("a", "b"), ("x" * 64, "y" * 128), ("a_1-b", "c-2_d")):
        assert validate(_with_manifest(_staged("chat"), author=author, name=name))["author"] == author


def test_model_and_tool_in_one_manifest_refused():
    chat, review = _staged("chat"), _staged("review")
    merged = {**{k: v for k, v in review.items() if k != "manifest.yaml"}, **chat}
    m = yaml.safe_load(chat["manifest.yaml"])
    m["plugins"]["tools"] = ["provider/steam_review.yaml"]
    merged["manifest.yaml"] = yaml.safe_dump(m, allow_unicode=True).encode()
    with pytest.raises(UserError, match="cannot be provided at the same time"):
        validate(merged, "combined")


def test_referenced_files_must_exist():
    files = _staged("review")
    with pytest.raises(UserError, match="tools/write_steam_review.py"):
        validate({k: v for k, v in files.items() if k != "tools/write_steam_review.py"})
    with pytest.raises(UserError, match="provider/steam_review.yaml"):
        validate({k: v for k, v in files.items() if k != "provider/steam_review.yaml"})
    provider = yaml.safe_load(files["provider/steam_review.yaml"])
    provider["tools"] = ["tools/write_steam_review.yml"]
    with pytest.raises(UserError, match=r"references tools/write_steam_review.yml; plugin YAML files must end in"
                                        r" .yaml \(only those are shipped\): rename it to tools/write_steam_review.yaml"):
        validate({**files, "provider/steam_review.yaml": yaml.safe_dump(provider).encode()})
    tool = yaml.safe_load(files["tools/write_steam_review.yaml"])
    del tool["parameters"][0]["human_description"]
    with pytest.raises(UserError, match="human_description"):
        validate({**files, "tools/write_steam_review.yaml": yaml.safe_dump(tool).encode()})
    with pytest.raises(UserError, match="_assets"):
        validate({k: v for k, v in _staged("chat").items() if not k.startswith("_assets/")})
    jpg = _with_manifest({**_staged("chat"), "_assets/logo.jpg": b"x"}, icon="logo.jpg")
    assert validate(jpg)["icon"] == "logo.jpg"  # an existing jpg is no missing icon
    with pytest.raises(UserError, match=r"icon 'logo.bmp' is not an image type Dify shows \(svg, png"):
        validate(_with_manifest(_staged("chat"), icon="logo.bmp"))  # (a .bmp is never shipped)


def test_oversize_refused():
    files = {**_staged("chat"), "big.bin": b"\0" * (MAX_UNPACKED_BYTES + 1)}
    with pytest.raises(UserError, match="50 MiB"):
        validate(files)


def test_cli_bad_version_exit_2_and_nothing_written(tmp_path):
    out = tmp_path / "dist"
    result = CliRunner().invoke(cli, ["plugin", "package", "--out", str(out), "--version", "1.2"])
    assert result.exit_code == 2
    assert "--version '1.2'" in result.output and "Traceback" not in result.output
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("version", ["\u0661.\u0660.\u0660", "1.0.0-\u65e5\u672c"])
def test_cli_refuses_versions_the_daemon_refuses(tmp_path, version):
    out = tmp_path / "dist"
    result = CliRunner().invoke(cli, ["plugin", "package", "--out", str(out), "--version", version])
    assert result.exit_code == 2 and "--version" in result.output and "Traceback" not in result.output
    assert not out.exists() or not list(out.iterdir())


def test_cli_writes_both(tmp_path):
    killed = tmp_path / f".steam_persona-0.1.0.difypkg.tmp-{DEAD_PID}"  # a package run killed while zipping
    live = tmp_path / f".steam_persona_review-0.1.0.difypkg.tmp-{os.getppid()}"
    for p in (killed, live):
        p.write_bytes(b"PK partial")
    result = CliRunner().invoke(cli, ["plugin", "package", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"note removed 1 temp file of an interrupted run: {killed}" in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "steam_persona-0.1.0.difypkg",
                                                          "steam_persona_review-0.1.0.difypkg"]
    # only files a user may have meant to ship are listed as left out, not the packager's own .difyignore
    assert ".difyignore" not in result.output and "chat: left out" not in result.output
    assert "tests/test_review_client.py" in result.output
    assert source_files(shipped("plugin/chat"))[1] == [] and (shipped("plugin/chat") / ".difyignore").is_file()
    assert source_files(shipped("plugin/review"))[1] == ["tests/test_review_client.py"]


# -- the plugins' own tests, run in each packaged plugin's folder ------------------------------------

#: Test folders beside the sources that each plugin's package must pass (plugin/common/ is in both).
OWN_TESTS = {"chat": ["plugin/common/tests"], "review": ["plugin/common/tests", "plugin/review/tests"]}


@pytest.mark.parametrize("key", sorted(OWN_TESTS))
def test_plugin_own_tests_pass_in_the_packaged_folder(key, tmp_path):
    """``python -m pytest tests`` in the unpacked plugin (as Dify's plugins are tested from their
    folder): the plain modules import only what the package holds, by the names it gives them."""
    with PluginCode(key) as code:
        for folder in OWN_TESTS[key]:
            shutil.copytree(shipped(folder), code.folder / "tests", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={tmp_path / 'junit.xml'}", "tests"], cwd=code.folder, env=env,
                              capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    suite = ElementTree.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert (suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("0", "0", "0")
    names = {case.get("name") for case in suite.iter("testcase")}
    assert {"test_endpoints_and_docker_hint", "test_errors_and_switches"} <= names
    assert ("test_tool_default_length_is_the_training_format" in names) == (key == "review")


def test_plugin_code_calls_the_packaged_function_in_its_folder():
    with PluginCode("review") as code:
        args = code.call("tools.review_client:prompt_args", "《Celeste》", verdict="Not Recommend")
        assert args == {"game_name": "《Celeste》", "tags": None, "verdict": "not recommend", "language": "zh",
                        "length": None, "extra_instructions": None}
        with pytest.raises(PluginCallError, match="game_name is required") as e:
            code.call("tools.review_client:prompt_args", " ")
        assert e.value.kind == "ReviewError"
        with pytest.raises(PluginCallError, match="No module named 'tools.nope'") as e:
            code.call("tools.nope:f")
        assert e.value.kind == "ModuleNotFoundError"
        folder = code.folder
        assert (folder / "persona.py").read_bytes() == shipped("common/persona.py").read_bytes()
    assert not folder.exists()
