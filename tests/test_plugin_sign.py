"""``steam-train plugin keygen / package --sign / verify``: the daemon's signature format, checked
with an independent re-computation, and every tampering the daemon must refuse."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from steam_persona.cli import main as cli
from steam_persona.common.errors import UserError
from steam_persona.plugin.package import PackageConfig, run
from steam_persona.plugin.sign import VERIFICATION, VERIFICATION_FILE, load_public_key, verify


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """Two pairs made by `plugin keygen`: ``a`` signs, ``b`` is "another key"."""
    out = {}
    for name in ("a", "b"):
        folder = tmp_path_factory.mktemp(f"keys_{name}")
        result = _cli("plugin", "keygen", "--out", str(folder))
        assert result.exit_code == 0, result.output
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def signed(keys, tmp_path_factory) -> dict[str, Path]:
    return run(PackageConfig(out=str(tmp_path_factory.mktemp("signed")),
                             sign=str(keys["a"] / "steam_persona.private.pem")))


def _entries(path: Path) -> tuple[list[tuple[zipfile.ZipInfo, bytes]], bytes]:
    with zipfile.ZipFile(path) as z:
        return [(i, z.read(i)) for i in z.infolist()], z.comment


def _rewrite(path: Path, entries: list[tuple[zipfile.ZipInfo, bytes]], comment: bytes) -> Path:
    out = path.with_name("tampered.difypkg")
    with zipfile.ZipFile(out, "w") as z:
        for info, data in entries:
            z.writestr(info, data)
        z.comment = comment
    return out


def _pub(keys, name="a") -> rsa.RSAPublicKey:
    return load_public_key(keys[name] / "steam_persona.public.pem")


def test_keygen_writes_a_4096_pkcs1_pair_private_0600(keys):
    private, public = keys["a"] / "steam_persona.private.pem", keys["a"] / "steam_persona.public.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    assert public.read_bytes().startswith(b"-----BEGIN RSA PUBLIC KEY-----\n")  # the only form the daemon loads
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    assert key.key_size == 4096
    assert key.public_key().public_numbers() == _pub(keys).public_numbers()
    assert sorted(p.name for p in keys["a"].iterdir()) == ["steam_persona.private.pem", "steam_persona.public.pem"]


def test_keygen_never_prints_the_key_and_keeps_an_existing_pair(keys):
    private = keys["a"] / "steam_persona.private.pem"
    before = private.read_bytes()
    result = _cli("plugin", "keygen", "--out", str(keys["a"]))
    assert result.exit_code == 2 and "already exists" in result.output
    assert private.read_bytes() == before
    body = b"".join(before.splitlines()[1:3]).decode()
    assert body not in result.output


@pytest.mark.parametrize("key", ["chat", "review"])
def test_signed_package_matches_the_daemon_format(signed, keys, key):
    entries, comment = _entries(signed[key])
    names = [i.filename for i, _ in entries]
    assert names[-1] == VERIFICATION_FILE and entries[-1][1] == VERIFICATION == b'{"authorized_category":"community"}'
    assert names[:-1] == sorted(names[:-1]) and "manifest.yaml" in names
    meta = json.loads(comment)
    assert sorted(meta) == ["signature", "time"] and isinstance(meta["time"], int)
    assert comment == json.dumps(meta, separators=(",", ":")).encode()  # Go's json.Marshal spelling
    # independent re-computation: sha256 of each entry in stored order, then the time as a decimal string
    data = b"".join(hashlib.sha256(d).digest() for _, d in entries) + str(meta["time"]).encode()
    signature = base64.b64decode(meta["signature"])
    assert len(signature) == 512  # RSA-4096
    _pub(keys).verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    assert verify(signed[key], _pub(keys)) == meta["time"]


def test_the_summary_counts_the_files_each_zip_holds(keys, tmp_path):
    """The table said 14 / 16 files while the signed zips held 15 / 17 (the verification entry)."""
    for sign in ((), ("--sign", str(keys["a"] / "steam_persona.private.pem"))):
        out = tmp_path / str(len(sign))
        result = _cli("plugin", "package", "--out", str(out), *sign)
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())
        for package in out.glob("*.difypkg"):
            with zipfile.ZipFile(package) as z:
                assert f"{package.name} ({len(z.namelist())} files, " in text, (sign, text)


def test_cli_verify_round_trip(signed, keys):
    result = _cli("plugin", "verify", str(signed["chat"]), str(signed["review"]),
                  "--public_key", str(keys["a"] / "steam_persona.public.pem"))
    assert result.exit_code == 0, result.output
    assert result.output.count("good, signed") == 2


def test_cli_verify_reports_every_package(signed, keys, tmp_path):
    unsigned = run(PackageConfig(out=str(tmp_path / "u")))["chat"]
    result = _cli("plugin", "verify", str(unsigned), str(tmp_path), str(signed["review"]),
                  "--public_key", str(keys["a"] / "steam_persona.public.pem"))
    assert result.exit_code == 2
    assert result.output.count("good, signed") == 1 and "a folder, not a .difypkg file" in result.output
    assert "2 of 3 packages failed the check; the first:" in result.output and "unsigned" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["package", "keygen"])
@pytest.mark.parametrize("where, words", [("file", "is a file, not a folder"), ("below_file", "cannot create the folder"),
                                          ("empty", "--out is empty")])
def test_cli_out_that_is_no_folder_is_one_line(tmp_path, command, where, words):
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "below_file": tmp_path / "afile" / "k", "empty": ""}[where]
    result = _cli("plugin", command, "--out", str(out))
    assert result.exit_code == 2 and words in result.output, result.output
    assert "Traceback" not in result.output and (tmp_path / "afile").read_text() == "x"


def test_a_flipped_byte_in_any_file_fails(signed, keys):
    entries, comment = _entries(signed["review"])
    for n, (info, data) in enumerate(entries):
        flipped = bytes([data[0] ^ 1]) + data[1:]
        tampered = _rewrite(signed["review"], entries[:n] + [(info, flipped)] + entries[n + 1:], comment)
        with pytest.raises(UserError, match="bad signature"):
            verify(tampered, _pub(keys))



def test_a_flipped_byte_in_the_zip_itself_says_corrupted(signed, keys, tmp_path):
    """A byte flipped inside an entry's stored data (its CRC no longer matches) is named a corrupted package."""
    raw = bytearray(signed["chat"].read_bytes())
    with zipfile.ZipFile(signed["chat"]) as z:
        info = z.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    broken = tmp_path / "broken.difypkg"
    broken.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="corrupted or modified since it was packaged"):
        verify(broken, _pub(keys))

def test_reordered_entries_fail(signed, keys):
    entries, comment = _entries(signed["chat"])
    same = _rewrite(signed["chat"], entries, comment)
    assert verify(same, _pub(keys)) == json.loads(comment)["time"]  # rewriting alone keeps it valid
    swapped = [entries[1], entries[0], *entries[2:]]
    with pytest.raises(UserError, match="bad signature"):
        verify(_rewrite(signed["chat"], swapped, comment), _pub(keys))


def test_changed_time_fails(signed, keys):
    entries, comment = _entries(signed["chat"])
    meta = json.loads(comment)
    later = json.dumps({**meta, "time": meta["time"] + 1}, separators=(",", ":")).encode()
    with pytest.raises(UserError, match="bad signature"):
        verify(_rewrite(signed["chat"], entries, later), _pub(keys))


def test_another_key_fails_with_one_line_exit_2(signed, keys):
    result = _cli("plugin", "verify", str(signed["chat"]), "--public_key", str(keys["b"] / "steam_persona.public.pem"))
    assert result.exit_code == 2
    assert "bad signature" in result.output and len(result.output.strip().splitlines()) == 1


def test_unsigned_is_reported_unsigned(keys, tmp_path):
    unsigned = run(PackageConfig(out=str(tmp_path)))["chat"]
    result = _cli("plugin", "verify", str(unsigned), "--public_key", str(keys["a"] / "steam_persona.public.pem"))
    assert result.exit_code == 2
    assert "unsigned" in result.output and len(result.output.strip().splitlines()) == 1


def test_signed_builds_differ_only_in_the_comment(signed, keys, tmp_path):
    again = run(PackageConfig(out=str(tmp_path), sign=str(keys["a"] / "steam_persona.private.pem")))
    for key in ("chat", "review"):
        a, b = signed[key].read_bytes(), again[key].read_bytes()
        ca, cb = _entries(signed[key])[1], _entries(again[key])[1]
        assert len(a) == len(b) and a[:-len(ca)] == b[:-len(cb)]


def _bad_keys(tmp: Path, keys) -> dict[str, tuple[Path, str]]:
    """Private keys `--sign` must refuse: path → expected words."""
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    curve = ec.generate_private_key(ec.SECP256R1())
    enc = serialization.NoEncryption()
    files = {
        "missing": (tmp / "nope.pem", "not found"),
        "garbage": (tmp / "garbage.pem", "not a PEM private key"),
        "rsa2048": (tmp / "rsa2048.pem", "RSA-2048"),
        "ec": (tmp / "ec.pem", "not an RSA key"),
        "public": (keys["a"] / "steam_persona.public.pem", "not a PEM private key"),
    }
    files["garbage"][0].write_text("-----BEGIN RSA PRIVATE KEY-----\nnot base64\n-----END RSA PRIVATE KEY-----\n")
    files["rsa2048"][0].write_bytes(small.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.TraditionalOpenSSL, enc))
    files["ec"][0].write_bytes(curve.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    return files


def test_bad_signing_keys_exit_2_and_write_nothing(keys, tmp_path):
    for name, (path, needle) in _bad_keys(tmp_path, keys).items():
        out = tmp_path / f"dist_{name}"
        result = _cli("plugin", "package", "--out", str(out), "--sign", str(path))
        assert result.exit_code == 2, (name, result.output)
        assert needle in result.output and len(result.output.strip().splitlines()) == 1, (name, result.output)
        assert not out.exists()


def test_signing_a_package_that_breaks_the_rules_writes_nothing(keys, tmp_path):
    out = tmp_path / "dist"
    result = _cli("plugin", "package", "--out", str(out), "--version", "1.2",
                  "--sign", str(keys["a"] / "steam_persona.private.pem"))
    assert result.exit_code == 2 and "--version '1.2'" in result.output
    assert not out.exists()


def test_bad_public_keys_exit_2(signed, keys, tmp_path):
    spki = tmp_path / "spki.pem"
    spki.write_bytes(_pub(keys).public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    cases = {str(spki): "-RSAPublicKey_out", str(tmp_path / "nope.pem"): "not found",
             str(keys["a"] / "steam_persona.private.pem"): "not a PEM 'RSA PUBLIC KEY'"}
    for path, needle in cases.items():
        result = _cli("plugin", "verify", str(signed["chat"]), "--public_key", path)
        assert result.exit_code == 2 and needle in result.output, result.output
    result = _cli("plugin", "verify", str(signed["chat"]))
    assert result.exit_code == 2 and "--public_key" in result.output
