"""Build llama.cpp's ``llama-server`` for ``steam-train serve --engine llama-server`` (``make llama-server``).

Why build: no well-kept prebuilt llama-server is on PyPI (the packages there download binaries at
run time or are sdists that build it anyway). We build it from the llama.cpp tree that the installed
llama-cpp-python's sdist vendors, with the same CMake arguments as its install (``CMAKE_ARGS``), so
both engines run the same llama.cpp with the same CPU flags. Only the ``llama-server`` target is
built; the web UI is neither built nor downloaded, and nothing is fetched but the sdist (from the
package index pip is configured with).

The binary lands in :func:`steam_persona.serve.llama_server.built_binary` (one per llama-cpp-python
version; a second run finds it and does nothing). Usage::

    python -m steam_persona.serve.llama_server_build [--cmake_args "-DGGML_NATIVE=OFF"] [--jobs N]

Exit status: 0 built or already there; 1 the build failed (the last lines of its log are printed).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

#: CMake arguments for llama-server alone: no tests, examples or web UI (and no UI download), no
#: OpenSSL (it serves loopback only), static libraries so the binary needs nothing beside it.
FIXED_CMAKE_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_UI=OFF",
                    "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF")


def _step(message: str, start: float) -> None:
    print(f"[{time.monotonic() - start:6.0f} s] {message}", flush=True)


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    """Run ``cmd`` with its output appended to ``log``.

    Raises:
        SystemExit: 1 when it fails, after printing the log's last lines.
    """
    with open(log, "ab") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    if code:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        print(f"llama-server build failed: {shlex.join(cmd[:3])}… exited {code}; full log: {log}", file=sys.stderr)
        raise SystemExit(1)


def vendored_tree(version: str, work: Path, log: Path) -> Path:
    """Download llama-cpp-python ``version``'s sdist into ``work`` and return its ``vendor/llama.cpp``."""
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--progress-bar", "off",
          f"llama-cpp-python=={version}", "-d", str(work)], log)
    sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    return next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))


def build(cmake_args: str, jobs: int) -> Path:
    """Build llama-server (or find it built) and return its path."""
    import llama_cpp

    from steam_persona.serve.llama_server import built_binary

    target = built_binary()
    if target.is_file():
        print(f"llama-server for llama-cpp-python {llama_cpp.__version__} is already built: {target}")
        return target
    start = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
        work, log = Path(tmp), target.parent / "build.log"
        log.write_text("")
        _step(f"downloading llama-cpp-python {llama_cpp.__version__}'s source (log: {log})", start)
        tree = vendored_tree(llama_cpp.__version__, work, log)
        _step(f"configuring {tree.relative_to(work)} with {cmake_args or 'no extra CMake arguments'}", start)
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run(["cmake", "-S", str(tree), "-B", str(tree / "build"), *generator, *FIXED_CMAKE_ARGS,
              *shlex.split(cmake_args)], log)
        _step(f"compiling llama-server with {jobs} job(s): about 20 minutes on 2 cores", start)
        _run(["cmake", "--build", str(tree / "build"), "--target", "llama-server", "-j", str(jobs)], log)
        tmp_target = target.with_suffix(".tmp")
        shutil.copy2(tree / "build" / "bin" / "llama-server", tmp_target)
        os.replace(tmp_target, target)
    _step(f"built {target}", start)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cmake_args", default=os.environ.get("CMAKE_ARGS", ""),
                    help="CMake arguments, as given to llama-cpp-python's install (default: $CMAKE_ARGS)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile jobs")
    args = ap.parse_args()
    build(args.cmake_args, args.jobs)


if __name__ == "__main__":
    main()
