"""`steam-train collect` against a local replay of Steam's appreviews API (real archived reviews)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.steam_replay import SteamReplay, cursor_for
from steam_persona.common import config
from steam_persona.cli import main
from steam_persona.reviews.collect import CollectConfig, collect, run
from steam_persona.common.errors import UserError

APP = "570980"  # 266 real reviews in the archive


@pytest.fixture(scope="module")
def archive(shared_dir: Path) -> list[dict]:
    data = json.loads((shared_dir / "data/raw/appreviews/review_570980.json").read_text(encoding="utf-8"))
    return list(data["reviews"].values())


@pytest.fixture
def steam(archive):
    with SteamReplay({APP: list(archive)}, details={APP: {"name": "《《伏龙记™》》", "genres": [
            {"id": "1", "description": "动作"}, {"id": "25", "description": "冒险"}]}}) as server:
        yield server


def _cfg(server: SteamReplay, out: Path, **kw) -> CollectConfig:
    base = dict(appid=[APP], out=str(out), base_url=server.base_url, num_per_page=50, rate_limit=0,
                backoff_base=0.001, backoff_max=0.005, timeout=2.0, max_retries=3)
    return config.build(CollectConfig, base, kw)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _ids(archive: list[dict]) -> set[str]:
    return {r["recommendationid"] for r in archive}


def test_paginates_with_encoded_cursors_and_dedups(tmp_path, archive):
    revs = archive[:100] + [archive[10], archive[70]] + archive[100:]  # two repeats across pages
    with SteamReplay({APP: revs}) as server:
        res = run(_cfg(server, tmp_path / "raw/{appid}.jsonl"))
    out = tmp_path / f"raw/{APP}.jsonl"
    rows = _lines(out)
    assert res["complete"] and len(rows) == 266
    assert [r["recommendationid"] for r in rows] == [r["recommendationid"] for r in archive]
    assert rows[5] == {**archive[5], "appid": 570980}  # raw review unchanged apart from appid
    # 268 served / 50 = 6 pages, then the empty page that ends it
    assert len(server.requests) == 7
    sent = [r["query"]["cursor"] for r in server.requests]
    assert sent[0] == "*" and sent[1] == cursor_for(APP, 50) and all(c in sent[1] for c in "+/=")
    raw = server.requests[1]["raw_query"]
    assert "%2B" in raw and "%2F" in raw and "%3D" in raw
    assert server.requests[0]["query"]["language"] == "schinese" and server.requests[0]["query"]["num_per_page"] == "50"
    assert not out.with_name(out.name + ".part").exists() and not out.with_name(out.name + ".lock").exists()
    assert json.loads(out.with_name(out.name + ".state.json").read_text())["complete"]


def test_429_then_success_and_500_burst(tmp_path, steam, archive):
    steam.faults = [429, None, 500, 502, 503, None, "malformed", None]
    res = run(_cfg(steam, tmp_path / "r.jsonl"))
    assert res["complete"] and res["retries"] == 5
    assert {r["recommendationid"] for r in _lines(tmp_path / "r.jsonl")} == _ids(archive)
    assert len(_lines(tmp_path / "r.jsonl")) == 266
    log = _lines(tmp_path / "r.log.jsonl")  # JSON-lines log beside the output
    problems = [e["problem"] for e in log if e["event"] == "retry"]
    assert problems[:4] == ["HTTP 429", "HTTP 500", "HTTP 502", "HTTP 503"]
    assert problems[4].startswith("malformed page: not JSON (starts '{\"success\": 1, \"cursor\": \"AoJ")
    assert sum(e["event"] == "page" for e in log) == 7 and log[-1]["event"] == "end" and log[-1]["complete"]


def test_timeout_is_retried(tmp_path, steam, archive):
    steam.faults, steam.slow_seconds = ["slow"], 1.0
    res = run(_cfg(steam, tmp_path / "r.jsonl", timeout=0.2))
    assert res["complete"] and res["retries"] == 1 and len(_lines(tmp_path / "r.jsonl")) == 266


def test_malformed_page_gives_clear_error_and_loses_nothing(tmp_path, steam, archive):
    out = tmp_path / "r.jsonl"
    steam.faults = [None, None] + ["malformed"] * 4  # page 3 stays broken through 3 retries
    res = collect(_cfg(steam, out))
    assert not res["complete"] and res["failed"][APP].startswith(f"{steam.base_url}/appreviews/{APP}: app {APP} page 3 ")
    assert "malformed page: not JSON" in res["failed"][APP] and "after 4 tries; progress is saved, rerun" in res["failed"][APP]
    part, state = tmp_path / "r.jsonl.part", json.loads((tmp_path / "r.jsonl.state.json").read_text())
    assert not out.exists() and len(_lines(part)) == 100
    assert state["apps"][APP]["cursor"] == cursor_for(APP, 100) and state["apps"][APP]["reviews"] == 100
    steam.faults = ["bad_review"] * 4  # a review without its id is malformed too
    with pytest.raises(UserError, match="1 app.s. failed"):
        run(_cfg(steam, out))
    assert "review 1 has no recommendationid" in [e for e in _lines(tmp_path / "r.log.jsonl") if e["event"] == "app_failed"][-1]["error"]
    run(_cfg(steam, out))  # the server recovers: resume
    rows = _lines(out)
    assert len(rows) == 266 and {r["recommendationid"] for r in rows} == _ids(archive)


def test_killed_run_resumes_without_duplicates_or_gaps(tmp_path, steam, archive):
    out = tmp_path / "r.jsonl"
    state = tmp_path / "r.jsonl.state.json"
    steam.delay = 0.1
    cmd = [sys.executable, "-m", "steam_persona", "collect", "--appid", APP, "--out", str(out), "--base_url", steam.base_url,
           "--num_per_page", "20", "--rate_limit", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if state.exists() and json.loads(state.read_text() or "{}").get("apps", {}).get(APP, {}).get("pages", 0) >= 3:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    part = tmp_path / "r.jsonl.part"
    saved = len(_lines(part))
    assert 60 <= saved < 266 and not out.exists()
    with open(part, "a", encoding="utf-8") as f:  # a torn line, as a kill mid-write leaves
        f.write('{"recommendationid": "99999", "rev')
    steam.delay = 0
    res = run(_cfg(steam, out, num_per_page=20))
    rows = _lines(out)
    assert res["complete"] and len(rows) == 266
    assert [r["recommendationid"] for r in rows] == [r["recommendationid"] for r in archive]


def test_repeated_cursor_ends_the_run(tmp_path, steam):
    steam.faults = [None, "repeat_cursor"]
    res = run(_cfg(steam, tmp_path / "r.jsonl"))
    assert res["complete"] and res["files"][0]["apps"][APP]["pages"] == 2
    assert len(_lines(tmp_path / "r.jsonl")) == 100 and len(steam.requests) == 2


def test_max_reviews_and_details_feed_prepare(tmp_path, steam):
    from steam_persona.reviews.prepare import PrepareConfig
    from steam_persona.reviews.prepare import run as prepare

    out = tmp_path / "raw/570980.jsonl"
    res = run(_cfg(steam, out, max_reviews=120, with_details=True))
    assert res["complete"] and len(_lines(out)) == 120 and len(steam.requests) == 4  # 3 pages + appdetails
    details = json.loads((tmp_path / "raw/570980.appdetails.json").read_text(encoding="utf-8"))
    assert details[APP]["data"]["name"] == "《《伏龙记™》》" and steam.requests[-1]["query"]["l"] == "schinese"
    prepared = prepare(config.build(PrepareConfig, {"inputs": [str(tmp_path / "raw")], "out": str(tmp_path / "sft.json"),
                                                    "val_size": 0}))
    assert prepared["formats"] == {str(out): "collect-jsonl", str(tmp_path / "raw/570980.appdetails.json"): "appdetails"}
    recs = json.loads((tmp_path / "sft.json").read_text(encoding="utf-8"))
    assert recs[0]["instruction"] == "请以资深玩家的身份，点评一下《伏龙记》这款游戏。" and recs[0]["input"] == "游戏类型标签：动作, 冒险"


def test_time_bound_stops_and_rerun_finishes(tmp_path, steam):
    steam.delay = 0.05
    res = collect(_cfg(steam, tmp_path / "r.jsonl", num_per_page=20, max_time=0.3))
    assert not res["complete"] and res["stopped"].startswith("time bound --max_time 0.3 s reached") and not (tmp_path / "r.jsonl").exists()
    assert 0 < len(_lines(tmp_path / "r.jsonl.part")) < 266
    steam.delay = 0
    assert run(_cfg(steam, tmp_path / "r.jsonl", num_per_page=20))["complete"]
    assert len(_lines(tmp_path / "r.jsonl")) == 266
    again = collect(_cfg(steam, tmp_path / "r.jsonl", num_per_page=20))  # already complete: nothing fetched
    assert again["files"][0]["skipped"]


def test_resume_with_other_settings_is_refused(tmp_path, steam):
    steam.faults = [None] + ["malformed"] * 4
    with pytest.raises(UserError):
        run(_cfg(steam, tmp_path / "r.jsonl"))
    with pytest.raises(UserError, match=r"r.jsonl: collected with other settings: --language english \(file: schinese\), "
                                        r"--filter all \(file: recent\); use the file's values, pass --overwrite"):
        run(_cfg(steam, tmp_path / "r.jsonl", language="english", filter="all"))


def test_rate_limit_spaces_requests(tmp_path, steam):
    t0 = time.monotonic()
    run(_cfg(steam, tmp_path / "r.jsonl", num_per_page=100, rate_limit=20))  # 3 pages + 1 empty
    assert time.monotonic() - t0 >= 3 / 20


def test_backoff_has_full_jitter_and_cap():
    from steam_persona.reviews.collect_fetch import Fetcher

    f = Fetcher(config.build(CollectConfig, {"backoff_base": 1.0, "backoff_max": 8.0}), None)
    waits = [f.backoff(5) for _ in range(200)]
    assert max(waits) <= 8.0 and min(waits) < 2.0 and len(set(waits)) > 150
    assert f.backoff(0, retry_after=3.0) >= 3.0  # Retry-After is honoured
    assert f.backoff(0, retry_after=20.0) >= 20.0  # even above --backoff_max
    f.close()


def test_cli_errors_exit_2_one_line(tmp_path, steam):
    r = CliRunner().invoke(main, ["collect", "--appid", "abc"])
    assert r.exit_code == 2 and "app ids are numbers" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["collect", "--appid", APP, "--base_url", steam.base_url + "/nope",
                                  "--out", str(tmp_path / "x.jsonl"), "--rate_limit", "0"])
    assert r.exit_code == 2 and "HTTP 404" in r.output


def test_resume_after_kill_between_append_and_state_keeps_max_reviews(tmp_path, steam, archive):
    """A kill after a page's reviews are saved but before the state is: the rerun fetches that page
    again, adds nothing twice, and still stops at --max_reviews (counts come from the .part file)."""
    out = tmp_path / "r.jsonl"
    steam.faults = [None, None] + ["malformed"] * 4
    with pytest.raises(UserError):
        run(_cfg(steam, out, max_reviews=120))
    with open(tmp_path / "r.jsonl.part", "a", encoding="utf-8") as f:  # page 3 saved, state not updated
        f.writelines(json.dumps({**r, "appid": 570980}, ensure_ascii=False) + "\n" for r in archive[100:110])
    res = run(_cfg(steam, out, max_reviews=120))
    rows = _lines(out)
    assert res["complete"] and len(rows) == 120
    assert [r["recommendationid"] for r in rows] == [r["recommendationid"] for r in archive[:120]]


def test_several_apps_one_file_or_one_each(tmp_path, shared_dir, archive):
    other = list(json.loads((shared_dir / "data/raw/appreviews/review_664750.json").read_text(encoding="utf-8"))["reviews"].values())
    with SteamReplay({APP: list(archive), "664750": other}) as server:
        res = run(_cfg(server, tmp_path / "all.jsonl", appid=[APP, "664750"]))
        rows = _lines(tmp_path / "all.jsonl")
        assert res["complete"] and len(rows) == 266 + 33
        assert [r["appid"] for r in rows] == [570980] * 266 + [664750] * 33
        res = run(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=[f"{APP},664750"]))
        assert [f["file"] for f in res["files"]] == [str(tmp_path / f"raw/{APP}.jsonl"), str(tmp_path / "raw/664750.jsonl")]
        assert len(_lines(tmp_path / "raw/664750.jsonl")) == 33


def test_details_only_names_an_archive_for_prepare(tmp_path, steam, shared_dir):
    from steam_persona.reviews.prepare import PrepareConfig
    from steam_persona.reviews.prepare import run as prepare

    out = tmp_path / "meta/{appid}.jsonl"
    res = run(_cfg(steam, out, details_only=True))
    assert res["complete"] and len(steam.requests) == 1 and steam.requests[0]["query"]["appids"] == APP
    details = tmp_path / f"meta/{APP}.appdetails.json"
    assert not (tmp_path / f"meta/{APP}.jsonl").exists()
    prepared = prepare(config.build(PrepareConfig, {
        "inputs": [str(shared_dir / "data/raw/appreviews/review_570980.json"), str(details)],
        "out": str(tmp_path / "sft.json"), "val_size": 0}))
    recs = json.loads((tmp_path / "sft.json").read_text(encoding="utf-8"))
    assert prepared["counts"]["kept"] > 100 and recs[0]["instruction"] == "请以资深玩家的身份，点评一下《伏龙记》这款游戏。"


def test_a_saved_review_holding_unicode_line_separators_resumes(tmp_path):
    """The .part file is JSON lines written with ensure_ascii=False: U+0085 and U+2028 in a review's text
    are inside its line, not line ends."""
    from steam_persona.reviews.collect_state import repair_part as _repair_part

    part = tmp_path / "r.jsonl.part"
    rows = [{"recommendationid": "1", "appid": 10, "review": "Alyx\x85 great\u2028really"},
            {"recommendationid": "2", "appid": 10, "review": "fine"}]
    part.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + '{"torn', encoding="utf-8")
    ids, per_app = _repair_part(part)
    assert ids == {"1", "2"} and per_app == {"10": 2}
    assert part.read_text(encoding="utf-8").count("\n") == 2  # the torn last line is cut
