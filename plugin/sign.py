"""Sign and verify ``.difypkg`` files exactly as the Dify plugin daemon does; make its key pairs.

Format (langgenius/dify-plugin-daemon ``pkg/plugin_packager/signer/withkey/sign_with_key.go`` and
``decoder/verifier.go``; ``../shared/reference/dify-plugin.md``, "Signing"):

* signed data = ``sha256(bytes)`` (32 raw bytes) of every zip entry **in stored order** — the last
  entry being ``.verification.dify.json`` = ``{"authorized_category":"community"}`` — followed by
  the signing time as a decimal Unix-seconds string;
* signature = RSA PKCS#1 v1.5 over SHA-256 of the signed data, with an RSA-4096 key;
* zip comment = ``{"signature":"<base64>","time":<the same Unix seconds>}``.

Keys are PEM in PKCS#1 form (``RSA PRIVATE KEY`` / ``RSA PUBLIC KEY``), the only public-key form the
daemon loads (``pkg/utils/encryption/rsa.go: LoadPublicKey``); ``dify signature generate`` writes
the same. All cryptography is the ``cryptography`` package's; here is only the daemon's framing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Iterable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from steam_persona.common.errors import UserError

#: The daemon's verification entry, written last in a signed package (``consts.VERIFICATION_FILE``).
VERIFICATION_FILE = ".verification.dify.json"
#: Its content: Go ``json.Marshal`` of ``Verification{AuthorizedCategory: "community"}`` (third party).
VERIFICATION = b'{"authorized_category":"community"}'
#: Key size of the daemon's keys (``dify signature generate``), in bits.
KEY_BITS = 4096
PRIVATE_NAME = "steam_persona.private.pem"
PUBLIC_NAME = "steam_persona.public.pem"
_KEYGEN_HINT = "make a pair with `steam-train plugin keygen --out keys/`"


def signed_data(entries: Iterable[bytes], time: int) -> bytes:
    """The bytes the daemon signs: each entry's SHA-256 digest in zip order, then ``str(time)``."""
    return b"".join(hashlib.sha256(data).digest() for data in entries) + str(time).encode("ascii")


def sign(entries: Iterable[bytes], key: rsa.RSAPrivateKey, time: int) -> bytes:
    """The zip comment (UTF-8 JSON) of a package whose entries, in stored order, are ``entries``
    (ending with :data:`VERIFICATION`), signed at ``time`` (Unix seconds)."""
    signature = key.sign(signed_data(entries, time), padding.PKCS1v15(), hashes.SHA256())
    return json.dumps({"signature": base64.b64encode(signature).decode("ascii"), "time": time},
                      separators=(",", ":")).encode("utf-8")


def _read_key(path: str | Path, kind: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {kind} key not found; {_KEYGEN_HINT}")
    return p.read_bytes()


def _check_size(key: rsa.RSAPrivateKey | rsa.RSAPublicKey, path: str | Path) -> None:
    if key.key_size != KEY_BITS:
        raise UserError(f"{path}: an RSA-{key.key_size} key; the plugin daemon's keys are RSA-{KEY_BITS}; "
                        f"{_KEYGEN_HINT}")


def load_private_key(path: str | Path) -> rsa.RSAPrivateKey:
    """Read an unencrypted RSA-4096 private key (PEM, PKCS#1 or PKCS#8).

    Raises:
        UserError: missing file, not a PEM private key, password-protected, not RSA, not 4096 bits.
    """
    data = _read_key(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UserError(f"{path}: the private key is password-protected; use an unencrypted key "
                        f"(as `dify signature generate` writes) or {_KEYGEN_HINT}") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise UserError(f"{path}: not a PEM private key ({e}); {_KEYGEN_HINT}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UserError(f"{path}: not an RSA key; the plugin daemon signs with RSA-{KEY_BITS}; {_KEYGEN_HINT}")
    _check_size(key, path)
    return key


def load_public_key(path: str | Path) -> rsa.RSAPublicKey:
    """Read an RSA-4096 public key in the one form the daemon loads: PEM ``RSA PUBLIC KEY`` (PKCS#1).

    Raises:
        UserError: missing file, another PEM type (e.g. ``PUBLIC KEY``, with the openssl line that
            converts it), malformed, not 4096 bits.
    """
    data = _read_key(path, "public")
    if b"-----BEGIN PUBLIC KEY-----" in data:
        raise UserError(f"{path}: a 'PUBLIC KEY' PEM, but the plugin daemon reads only 'RSA PUBLIC KEY' "
                        f"(PKCS#1); convert it: openssl rsa -pubin -in {path} -RSAPublicKey_out")
    if not data.lstrip().startswith(b"-----BEGIN RSA PUBLIC KEY-----"):
        raise UserError(f"{path}: not a PEM 'RSA PUBLIC KEY'; give the .public.pem of the pair, {_KEYGEN_HINT}")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise UserError(f"{path}: malformed RSA public key ({e}); {_KEYGEN_HINT}") from None
    _check_size(key, path)
    return key


def keygen(out: str | Path) -> tuple[Path, Path]:
    """Write a new RSA-4096 pair to ``out/steam_persona.{private,public}.pem`` (private mode 0600).

    The private key is written to a 0600 temp file then renamed (never world-readable, never
    half-written); it is never printed.

    Raises:
        UserError: a key file already exists there (it is kept: a lost key cannot sign updates).
    """
    out = Path(out)
    private, public = out / PRIVATE_NAME, out / PUBLIC_NAME
    for p in (private, public):
        if p.exists():
            raise UserError(f"{p}: already exists and is kept; pick another --out or move the old pair away")
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    out.mkdir(parents=True, exist_ok=True)
    _write(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()), 0o600)
    try:
        _write(public, key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
               0o644)
    except BaseException:
        private.unlink()  # never half a pair
        raise
    return private, public


def _write(target: Path, data: bytes, mode: int) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed the public key's mode
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def verify(package: str | Path, key: rsa.RSAPublicKey) -> int:
    """Check ``package``'s signature the daemon's way; return the signing time (Unix seconds).

    Raises:
        UserError: not a zip; ``unsigned`` (no zip comment); a malformed comment; a bad signature
            (a changed, added, removed or reordered entry, another time, another key).
    """
    try:
        with zipfile.ZipFile(package) as z:
            comment = z.comment
            entries = [z.read(info) for info in z.infolist()]
    except FileNotFoundError:
        raise UserError(f"{package}: not found; check the path") from None
    except (zipfile.BadZipFile, zlib.error, OSError) as e:
        raise UserError(f"{package}: corrupted or modified since it was packaged, or not a .difypkg zip ({e}); "
                        "package it again") from None
    if not comment:
        raise UserError(f"{package}: unsigned (no signature in the zip comment); "
                        f"build it with `steam-train plugin package --sign KEY`")
    try:
        meta = json.loads(comment)
        signature = base64.b64decode(meta["signature"], validate=True)
        time = meta["time"]
        if type(time) is not int:
            raise TypeError("time is not an integer")
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise UserError(f"{package}: bad signature (malformed zip comment: {e}); sign it again") from None
    try:
        key.verify(signature, signed_data(entries, time), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise UserError(f"{package}: bad signature (the files, their order or the time changed since "
                        f"signing, or it was signed with another key); sign it again") from None
    return time
