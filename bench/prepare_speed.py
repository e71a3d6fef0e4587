"""How fast is `steam-train prepare` on 100k reviews? Target: ≤ 10 s through every rule on 2 CPU cores.

Builds a synthetic collect-format JSONL (plus its appdetails file) by multiplying the real reviews
in ../shared/data (store CSV, appreviews archives, seed sample): each synthetic review splices
sentences of two real ones, so texts stay realistic but mostly unique (dedup does real work);
3 % are exact copies and 2 % edited copies (near duplicates), 1 % carry BBCode, ``\\r``, a
QQ-group advert, a page header or an app signature; a fifth have no ``language`` field (so the
language detector runs). Then it times, in one process:

* rules_off: read + render + write with every cleaning rule switched off (once);
* every_rule: every rule on (the defaults plus --drop_checklists, --script_check, --drop_masked and
  examples/blocklist.txt), one rule worker per CPU; every_rule_one_process: the same in one process;
* default_rules_one_process: the defaults in one process;
* before REF (``--before REF``, repeatable): the default pipeline of the code at git REF, in a
  subprocess on the same input; repeated ``--repeat`` times interleaved with the others, so all share the machine's
  load; the least-CPU run of each counts;
* per_rule_s: once more with every rule in one process, the seconds spent inside each rule's function
  (wrapped with a timer; the hot rules are the ones to work on).

Wall time depends on what else runs on the machine (the load average is recorded); CPU time of
this process and its rule workers is the steadier figure, and the ratios are taken on it.

Prints the figures and writes bench/results/prepare_speed.json.
Ratios are taken against the first ``--before`` ref.
Usage: ``python bench/prepare_speed.py [--n 100000] [--before REF ...] [--repeat 2]``.
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

from steam_persona.common import config
from steam_persona.reviews import (dedup, language as language_mod, links, markup, noise, sources, spam,
                                   text as text_mod, wordlist)
from steam_persona.reviews.prepare import PrepareConfig, run  # noqa: E402

#: the functions of the per-record rules and the duplicate finder, timed one by one by :func:`per_rule_seconds`
RULE_FUNCTIONS = {
    markup: ("strip_bbcode", "strip_html"),
    text_mod: ("normalize_whitespace", "has_profanity_mask"),
    language_mod: ("detect_language", "script_mismatch"),
    spam: ("spam_reason",),
    links: ("scrub_pii",),
    dedup: ("dedup_key",),
    noise: ("strip_page_residue", "strip_handles", "strip_art", "checklist_reason", "little_language_reason",
            "repetition_reason", "length"),
    wordlist.WordList: ("find",),  # the identity slurs and --blocklist
    dedup.NearDuplicates: ("first_copies",),
}


def real_texts() -> list[str]:
    texts = []
    for p in sources.expand_inputs([str(SHARED / "data/raw"), str(SHARED / "data/steam_sft_sample.json")]):
        texts += [r.text for r in sources.read(p).reviews if len(r.text) > 10]
    return texts


def synthesize(n: int, out: Path, seed: int = 0) -> dict:
    """Write the input (below) and return its review length: mean characters and UTF-8 bytes, total KB."""
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
        row = {"recommendationid": str(10**9 + i), "author": {"steamid": str(76561190000000000 + i),
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
    utf8 = sum(len(r["review"].encode("utf-8")) for r in rows)
    return {"review_chars_mean": round(sum(len(r["review"]) for r in rows) / n, 1),
            "review_utf8_bytes_mean": round(utf8 / n, 1), "review_text_kb": round(utf8 / 1024)}


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
from {common} import config
from {stage}.prepare import PrepareConfig, run
assert config.__file__.startswith(sys.argv[2]), config.__file__  # the ref's code, not an installed copy
t0, c0 = time.perf_counter(), time.process_time()
res = run(config.build(PrepareConfig, json.loads(sys.argv[1])))
print("BEFORE " + json.dumps({{"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                              "kept": res["counts"]["kept"]}}))
"""


def timed_before(ref: str, flags: dict, tmp: Path) -> dict:
    """The default pipeline of the code at git ``ref`` (a subprocess on the same input). A ref from
    before the ``steam_persona`` package imports its ``trainer`` package directly; a later one needs
    ``steam_persona/`` and ``pyproject.toml`` beside its stage folders so that ``steam_persona.*`` is the
    ref's and not the installed checkout's (``prepare`` moved from ``trainer/`` to ``reviews/``)."""
    code = tmp / "before"
    code.mkdir(parents=True)
    names = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", ref], check=True, capture_output=True,
                           text=True).stdout.split()
    paths = [p for p in ("common", "reviews", "trainer", "steam_persona", "pyproject.toml", "examples") if p in names]
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, *paths], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    if "reviews" in names:  # common/ + reviews/ under steam_persona
        modules = {"common": "steam_persona.common", "stage": "steam_persona.reviews"}
    else:
        pkg = "steam_persona.trainer" if "steam_persona" in names else "trainer"
        modules = {"common": pkg, "stage": pkg}
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([sys.executable, "-c", _BEFORE.format(**modules), json.dumps(flags), str(code)], env=env,
                         cwd=code, check=True, capture_output=True, text=True).stdout  # cwd: not this checkout
    return json.loads(next(line for line in out.splitlines() if line.startswith("BEFORE "))[7:])


def per_rule_seconds(flags: dict) -> dict[str, float]:
    """Seconds (``perf_counter``) spent inside each of :data:`RULE_FUNCTIONS` during one run with
    ``flags``, most first; the timer adds well under a microsecond a call."""
    spent: dict[str, float] = {}
    saved = []
    for owner, names in RULE_FUNCTIONS.items():
        for name in names:
            fn = getattr(owner, name)

            def timed_fn(*a, _fn=fn, _name=name, **k):
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t0

            saved.append((owner, name, fn))
            setattr(owner, name, timed_fn)
    try:
        run(config.build(PrepareConfig, flags))
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
    return {k: round(v, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}


def _best(runs: list[tuple[float, float]]) -> dict:
    """The run with the least CPU (the one least disturbed by other work), and all of them."""
    wall, cpu = min(runs, key=lambda t: t[1])
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "all_wall_s": [round(w, 2) for w, _ in runs],
            "all_cpu_s": [round(c, 2) for _, c in runs]}


def measure(n: int, before_refs: list[str], repeat: int) -> tuple[dict, dict, dict, dict]:
    """Time each configuration ``repeat`` times, interleaved with the pipelines of ``before_refs``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "raw/synthetic.jsonl"
        src.parent.mkdir()
        size = synthesize(n, src)
        off = dict(strip_bbcode=False, strip_html=False, normalize_whitespace=False, drop_spam=False, scrub_pii=False,
                   dedup=False, near_dedup=False, min_chars=0, max_chars=0, min_words=0, max_words=0,
                   strip_page_residue=False, strip_handles=False, strip_art=False, drop_identity_slurs=False,
                   drop_little_language=False, drop_repetition=False, detect_language=False)
        every = dict(drop_checklists=True, script_check=True, drop_masked=True, blocklist=str(REPO / "examples/blocklist.txt"))
        base = {"inputs": [str(src.parent)], "out": str(Path(tmp) / "out/train.json")}
        configs = {"every_rule": {**base, **every, "preprocessing_num_workers": 0}, "every_rule_one_process": {**base, **every, "preprocessing_num_workers": 1},
                   "default_rules_one_process": {**base, "preprocessing_num_workers": 1}}
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in [*(f"before {r}" for r in before_refs), *configs]}
        w, c, res = timed({**base, **off})
        times["rules_off"] = [(w, c)]
        for rep in range(repeat):
            for i, ref in enumerate(before_refs):
                b = timed_before(ref, {**base, "out": str(Path(tmp) / f"before{rep}_{i}/out/train.json")}, Path(tmp) / f"b{rep}_{i}")
                times[f"before {ref}"].append((b["wall"], b["cpu"]))
            for name, flags in configs.items():
                w, c, res = timed(flags)
                times[name].append((w, c))
        rules = per_rule_seconds(configs["every_rule_one_process"])
    return {k: _best(v) for k, v in times.items() if v}, res, rules, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="synthetic reviews")
    ap.add_argument("--before", action="append", default=[],
                    help="git ref whose default pipeline to time on the same input (repeatable; ratios use the first)")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved repetitions (the least-CPU run counts)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    runs, res, rules, size = measure(args.n, args.before, args.repeat)
    load = max(load, os.getloadavg()[0])
    cpu = {k: v["cpu_s"] for k, v in runs.items()}
    result = {
        "date": time.strftime("%Y-%m-%d"), "reviews": args.n, "target_seconds": 10, "repeat": args.repeat,
        "workers": min(os.cpu_count() or 1, 8), "input": size, "runs": runs,
        "every_rule_one_process_cpu_ms_per_kb": round(cpu["every_rule_one_process"] * 1000 / size["review_text_kb"], 3),
        **({"before_refs": args.before,
            "ratio_default_rules_vs_before_cpu": round(cpu["default_rules_one_process"] / cpu[f"before {args.before[0]}"], 2),
            "ratio_every_rule_vs_before_cpu": round(cpu["every_rule_one_process"] / cpu[f"before {args.before[0]}"], 2)}
           if args.before else {}),
        "kept": res["counts"]["kept"], "removed": {k: v for k, v in res["removed"].items() if v},
        "per_rule_s": rules,
        "load_average_1min": round(load, 1),  # the higher of the start's and the end's
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    for name, r in runs.items():
        print(f"{name:28s} {r['wall_s']:6.1f} s wall  {r['cpu_s']:6.1f} s CPU  (all CPU: {r['all_cpu_s']})")
    print("inside each rule (every rule, one process): " + ", ".join(f"{k} {v} s" for k, v in rules.items()))
    if args.before:
        print(f"CPU vs {args.before[0]} (its defaults): default rules {result['ratio_default_rules_vs_before_cpu']}x, "
              f"every rule {result['ratio_every_rule_vs_before_cpu']}x; {args.n:,} reviews, target <= 10 s, "
              f"load average {load:.1f} on {os.cpu_count()} CPUs")
    out = REPO / "bench/results/prepare_speed.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
