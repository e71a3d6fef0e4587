"""How fast is `steam-train prepare` on 100k reviews? Target: ≤ 10 s through every rule on 2 CPU cores.

Builds a synthetic collect-format JSONL (plus its appdetails file) by multiplying the real reviews
in ../shared/data (store CSV, appreviews archives, seed sample): each synthetic review splices
sentences of two real ones, so texts stay realistic but mostly unique (dedup does real work);
3 % are exact copies and 2 % edited copies (near duplicates), 1 % carry BBCode, ``\\r``, a
QQ-group advert, a page header or an app signature; a fifth have no ``language`` field (so the
language detector runs). Then it times, in one process:

* baseline: read + render + write with every cleaning rule switched off;
* full: every rule on (the defaults plus --drop_checklists, --script_check, --drop_masked and
  examples/blocklist.txt), with one rule worker per CPU and again with one process;
* before (``--before REF``): the default pipeline of the code at git REF, run in a subprocess on the
  same input right after, so both figures share the machine's load.

Wall time depends on what else runs on the machine (the load average is recorded); CPU time of
this process and its rule workers is the steadier figure, and the ratios are taken on it.

Prints the figures and writes bench/results/prepare_speed.json.
Usage: ``python bench/prepare_speed.py [--n 100000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STEAM_PERSONA_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))

from trainer import config, sources  # noqa: E402
from trainer.prepare import PrepareConfig, run  # noqa: E402


def real_texts() -> list[str]:
    texts = []
    for p in sources.expand_inputs([str(SHARED / "data/raw"), str(SHARED / "data/steam_sft_sample.json")]):
        texts += [r.text for r in sources.read(p).reviews if len(r.text) > 10]
    return texts


def synthesize(n: int, out: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    texts = real_texts()
    pieces = [s for t in texts for s in re.split(r"(?<=[。！？!?\n])", t) if len(s.strip()) > 3]
    apps = [str(100000 + i) for i in range(100)]
    rows = []
    for i in range(n):
        u = rng.random()
        if u < 0.03 and rows:
            text = rng.choice(rows)["review"]  # exact copy
        elif u < 0.05 and rows:
            text = rng.choice(rows)["review"] + "！！"  # edited copy
        else:
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(2, 5)))
            if u > 0.99:
                text = rng.choice(["[spoiler]{}[/spoiler]", "[b]{}[/b]\r\n", "{} Q群000000000 欢迎",
                                   "发布于：3 月 4 日\n{}", "{}\n——来自小黑盒用户某某的评价"]).format(text)
        row = {"recommendationid": str(10**9 + i), "author": {"steamid": "76561190000000000",
               "playtime_forever": rng.randint(0, 6000)}, "language": "schinese", "review": text,
               "voted_up": rng.random() < 0.8, "votes_up": rng.randint(0, 50), "appid": int(rng.choice(apps))}
        if rng.random() < 0.2:
            del row["language"]
        rows.append(row)
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    details = {a: {"success": True, "data": {"name": f"测试游戏 {a}™", "genres": [{"id": "1", "description": "动作"}]}}
               for a in apps}
    out.with_suffix(".appdetails.json").write_text(json.dumps(details, ensure_ascii=False), encoding="utf-8")


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the rule workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(flags: dict) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of this process and its workers, result)."""
    t0, c0 = time.perf_counter(), _cpu()
    res = run(config.build(PrepareConfig, flags))
    return time.perf_counter() - t0, _cpu() - c0, res


_BEFORE = """
import json, sys, time
from trainer import config
from trainer.prepare import PrepareConfig, run
t0, c0 = time.perf_counter(), time.process_time()
res = run(config.build(PrepareConfig, json.loads(sys.argv[1])))
print("BEFORE " + json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                              "kept": res["counts"]["kept"]}))
"""


def timed_before(ref: str, flags: dict, tmp: Path) -> dict:
    """The default pipeline of the code at git ``ref`` (a subprocess on the same input)."""
    code = tmp / "before"
    code.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "trainer"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([sys.executable, "-c", _BEFORE, json.dumps(flags)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("BEFORE "))[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="synthetic reviews")
    ap.add_argument("--before", default="", help="git ref whose default pipeline to time on the same input")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "raw/synthetic.jsonl"
        src.parent.mkdir()
        t0 = time.perf_counter()
        synthesize(args.n, src)
        build_s = time.perf_counter() - t0
        off = dict(strip_bbcode=False, strip_html=False, normalize_whitespace=False, drop_spam=False, scrub_pii=False,
                   dedup=False, near_dedup=False, min_chars=0, max_chars=0, min_words=0, max_words=0,
                   strip_page_residue=False, strip_handles=False, strip_art=False, drop_identity_slurs=False,
                   drop_little_language=False, drop_repetition=False, detect_language=False)
        every = dict(drop_checklists=True, script_check=True, drop_masked=True, blocklist=str(REPO / "examples/blocklist.txt"))
        base = {"inputs": [str(src.parent)], "out": str(Path(tmp) / "out/train.json")}
        load = os.getloadavg()[0]
        base_s, base_cpu, base_res = timed({**base, **off})
        default_s, default_cpu, _ = timed(base)
        full_s, full_cpu, full_res = timed({**base, **every})
        one_s, one_cpu, _ = timed({**base, **every, "preprocessing_num_workers": 1})
        before = timed_before(args.before, {**base, "out": str(Path(tmp) / "before/out/train.json")}, Path(tmp)) \
            if args.before else None
    result = {
        "reviews": args.n,
        "baseline_seconds": round(base_s, 2),
        "full_seconds": round(full_s, 2),
        "full_workers": min(os.cpu_count() or 1, 8),
        "full_one_worker_seconds": round(one_s, 2),
        "full_one_worker_cpu_seconds": round(one_cpu, 2),
        "full_reviews_per_second": round(args.n / full_s),
        "ratio_full_vs_baseline_cpu": round(full_cpu / base_cpu, 2),
        "default_rules_seconds": round(default_s, 2),
        "default_rules_cpu_seconds": round(default_cpu, 2),
        "baseline_cpu_seconds": round(base_cpu, 2),
        "full_cpu_seconds": round(full_cpu, 2),
        "load_average_1min": round(load, 1),
        "target_seconds": 10,
        "date": time.strftime("%Y-%m-%d"),
        **({"before_ref": args.before, "before_seconds": round(before["wall"], 2),
            "before_cpu_seconds": round(before["cpu"], 2), "before_kept": before["kept"],
            "ratio_full_vs_before_cpu": round(full_cpu / before["cpu"], 2),
            "ratio_default_vs_before_cpu": round(default_cpu / before["cpu"], 2)} if before else {}),
        "kept": full_res["counts"]["kept"],
        "removed": {k: v for k, v in full_res["removed"].items() if v},
        "baseline_kept": base_res["counts"]["kept"],
        "synthesis_seconds": round(build_s, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    print(f"every rule in one process: {one_s:.1f} s wall / {one_cpu:.1f} s CPU")
    print(f"prepare on {args.n:,} reviews: full {full_s:.1f} s wall / {full_cpu:.1f} s CPU "
          f"({result['full_reviews_per_second']:,} reviews/s), baseline (rules off) {base_s:.1f} s wall / "
          f"{base_cpu:.1f} s CPU, CPU ratio {result['ratio_full_vs_baseline_cpu']}x; target <= 10 s "
          f"(load average {load:.1f} on {os.cpu_count()} CPUs)")
    if before:
        print(f"before ({args.before}, default rules): {before['wall']:.1f} s wall / {before['cpu']:.1f} s CPU; "
              f"now with the default rules {default_s:.1f} s wall / {default_cpu:.1f} s CPU "
              f"({result['ratio_default_vs_before_cpu']}x); every rule vs before {result['ratio_full_vs_before_cpu']}x")
    print(f"kept {result['kept']:,}; removed {result['removed']}")
    out = REPO / "bench/results/prepare_speed.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
