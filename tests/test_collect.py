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

from conftest import DEAD_PID
from tests.steam_replay import SteamReplay, cursor_for
from steam_persona.common import config, errors
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
        with pytest.raises(UserError, match=rf"another collect \(pid {proc.pid}\) is writing"):  # one run at a time
            collect(_cfg(steam, out, num_per_page=20))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    part = tmp_path / "r.jsonl.part"
    saved = len(_lines(part))
    assert 60 <= saved < 266 and not out.exists()
    with open(part, "a", encoding="utf-8") as f:  # a torn line, as a kill mid-write leaves
        f.write('{"recommendationid": "99999", "rev')
    steam.delay = 0
    assert (tmp_path / "r.jsonl.lock").exists()  # left by the killed run: taken over
    res = run(_cfg(steam, out, num_per_page=20))
    rows = _lines(out)
    assert res["complete"] and len(rows) == 266 and not (tmp_path / "r.jsonl.lock").exists()
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
    steam.delay = 0.25  # 14 pages: 3.5 s in all; the bound leaves room for a first page on a busy machine
    res = collect(_cfg(steam, tmp_path / "r.jsonl", num_per_page=20, max_time=1.5))
    assert not res["complete"] and res["stopped"].startswith("time bound --max_time 1.5 s reached") and not (tmp_path / "r.jsonl").exists()
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


def test_app_ids_as_users_write_them(tmp_path, steam):
    """Trial 25c: full-width digits (a CJK input method) passed isdigit() and went to Steam as /appreviews/５７０
    ("Steam has none", exit 0); a pasted store URL was refused; ² was taken for an id."""
    fw = APP.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    url = f"https://store.steampowered.com/app/{APP}/Some_Game/?snr=1_7_7_151_150_1"
    res = run(_cfg(steam, tmp_path / "raw/{appid}.jsonl", appid=[f"{fw}，{url}", APP], max_reviews=10))
    assert res["complete"] and [Path(f["file"]).name for f in res["files"]] == [f"{APP}.jsonl"]
    assert {q["path"] for q in steam.requests} == {f"/appreviews/{APP}"}
    assert len(_lines(tmp_path / f"raw/{APP}.jsonl")) == 10
    for bad in ("²", "https://example.com/app/570/", "Dota 2", "0", "00", "-5", "570.5", "０"):
        r = CliRunner().invoke(main, ["collect", "--appid", bad, "--out", str(tmp_path / "b/{appid}.jsonl")])
        assert r.exit_code == 2 and "app ids are numbers" in r.output and "Traceback" not in r.output


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


def _fake(appid: str, n: int) -> list[dict]:
    """``n`` small synthetic reviews of ``appid`` (ids unique across apps)."""
    return [{"recommendationid": f"{appid}{i:04d}", "review": f"review {i} of {appid}", "voted_up": True,
             "language": "schinese", "author": {"steamid": str(i), "playtime_at_review": 600}} for i in range(n)]


def test_a_second_run_on_a_locked_output_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, steam):
    from steam_persona.reviews import collect_state

    out = tmp_path / "r.jsonl"
    with collect_state.locked(out):  # another run is writing out
        with pytest.raises(UserError, match=rf"r.jsonl.lock: another collect \(pid {os.getpid()}\) is writing .*r.jsonl; "
                                            "wait for it to end"):
            collect(_cfg(steam, out))
    assert steam.requests == [] and not out.exists()
    (tmp_path / "r.jsonl.lock").write_text("999999")  # left by a killed run: nobody holds it
    assert collect(_cfg(steam, out))["complete"] and len(_lines(out)) == 266
    assert not (tmp_path / "r.jsonl.lock").exists()


def test_a_stale_state_without_its_part_never_shrinks_a_complete_output(tmp_path, steam, archive):
    """The trial's data loss: an old state beside a finished output resumed from its cursor with an
    empty .part and replaced 266 reviews with the rest."""
    out, state = tmp_path / "r.jsonl", tmp_path / "r.jsonl.state.json"
    steam.faults = [None, None] + ["malformed"] * 4
    assert not collect(_cfg(steam, out))["complete"]
    old = state.read_text()
    assert collect(_cfg(steam, out))["complete"] and len(_lines(out)) == 266
    state.write_text(old)
    n = len(steam.requests)
    with pytest.raises(UserError, match=r"r.jsonl.state.json: left by an older unfinished run beside the complete "
                                        r".*r.jsonl; delete .*state.json to keep .*r.jsonl as it is, or pass --overwrite"):
        collect(_cfg(steam, out))
    assert len(steam.requests) == n and len(_lines(out)) == 266


def test_a_kill_between_rename_and_state_write_finishes_on_rerun(tmp_path, steam):
    out, state_path = tmp_path / "r.jsonl", tmp_path / "r.jsonl.state.json"
    collect(_cfg(steam, out))
    state = json.loads(state_path.read_text())
    state["complete"] = False  # .part was renamed, the state not yet saved
    state_path.write_text(json.dumps(state))
    n = len(steam.requests)
    assert collect(_cfg(steam, out))["files"][0]["skipped"] and len(steam.requests) == n
    assert json.loads(state_path.read_text())["complete"] and len(_lines(out)) == 266
    out.unlink()  # a deleted output is collected again
    assert collect(_cfg(steam, out))["complete"] and len(_lines(out)) == 266


def test_finish_never_replaces_a_larger_output(tmp_path):
    from steam_persona.reviews.collect_state import finish

    out, part, state = tmp_path / "r.jsonl", tmp_path / "r.jsonl.part", tmp_path / "r.jsonl.state.json"
    out.write_text("1\n2\n3\n")
    part.write_text("1\n")
    with pytest.raises(UserError, match=r"r.jsonl: holds 3 reviews, more than the 1 this run collected"):
        finish(out, part, state, {"apps": {}}, overwrite=False)
    assert out.read_text() == "1\n2\n3\n" and part.exists() and not state.exists()
    finish(out, part, state, {"apps": {}}, overwrite=True)
    assert out.read_text() == "1\n" and json.loads(state.read_text())["complete"]


def test_a_complete_file_checks_settings_and_grows_with_max_reviews(tmp_path, steam, archive):
    out = tmp_path / "raw/570980.jsonl"
    collect(_cfg(steam, out, max_reviews=60))
    n = len(steam.requests)
    with pytest.raises(UserError, match=r"570980.jsonl: collected with other settings: --language english \(file: "
                                        r"schinese\), --filter all \(file: recent\); .*--overwrite .* another --out"):
        collect(_cfg(steam, out, language="english", filter="all"))
    assert len(steam.requests) == n and len(_lines(out)) == 60
    assert collect(_cfg(steam, out, max_reviews=30))["files"][0]["skipped"] and len(_lines(out)) == 60  # kept
    res = collect(_cfg(steam, out, max_reviews=120))  # continues from the saved cursor
    assert res["complete"] and steam.requests[n]["query"]["cursor"] == cursor_for(APP, 60)
    assert [r["recommendationid"] for r in _lines(out)] == [r["recommendationid"] for r in archive[:120]]
    assert [r["query"]["num_per_page"] for r in steam.requests[n:]] == ["50", "10"]  # min(num_per_page, needed)
    n = len(steam.requests)
    assert collect(_cfg(steam, out, max_reviews=120, with_details=True))["complete"]  # only the missing appdetails
    assert [r["path"] for r in steam.requests[n:]] == ["/api/appdetails"]
    assert json.loads((tmp_path / "raw/570980.appdetails.json").read_text())[APP]["success"] is True


def test_a_rerun_removes_the_temp_files_a_killed_run_left_beside_its_output(tmp_path, steam, capsys):
    """Trial 28 B2: the copy of a complete file that a run grows (``.570980.jsonl.part.tmp-PID``) stayed after a kill."""
    out = tmp_path / "raw/570980.jsonl"
    collect(_cfg(steam, out, max_reviews=60))
    killed = tmp_path / f"raw/.570980.jsonl.part.tmp-{DEAD_PID}"
    live = tmp_path / f"raw/.570980.jsonl.state.json.tmp-{os.getppid()}"
    other = tmp_path / f"raw/.730.jsonl.part.tmp-{DEAD_PID}"  # another output's: its own rerun removes it
    for p in (killed, live, other):
        p.write_text("x", encoding="utf-8")
    capsys.readouterr()
    assert collect(_cfg(steam, out, max_reviews=120))["complete"] and len(_lines(out)) == 120
    assert not killed.exists() and live.exists() and other.exists()
    assert f"note removed 1 temp file of an interrupted run: {killed}" in " ".join(capsys.readouterr().err.split())


def test_appdetails_without_success_are_not_cached_and_are_asked_again(tmp_path, capsys):
    with SteamReplay({"10": _fake("10", 3)}) as server:  # no details for app 10
        res = run(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=["10"], with_details=True))  # no exit 2
        assert res["complete"] and not (tmp_path / "raw/10.appdetails.json").exists()
        err = capsys.readouterr().err
        assert "app 10: Steam returned no appdetails" in err and "--app_name 10=NAME" in err
        (tmp_path / "raw/10.appdetails.json").write_text('{"10": {"success": false}}')  # cached by an older version
        server.details["10"] = {"name": "Half-Life 2"}
        collect(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=["10"], details_only=True))
        assert sum(r["path"] == "/api/appdetails" for r in server.requests) == 2
    saved = json.loads((tmp_path / "raw/10.appdetails.json").read_text())
    assert saved == {"10": {"success": True, "data": {"name": "Half-Life 2"}}}


def test_reviews_without_text_are_skipped_and_null_authors_dropped_so_prepare_reads_the_file(tmp_path):
    from steam_persona.reviews.prepare import PrepareConfig
    from steam_persona.reviews.prepare import run as prepare

    revs = _fake("10", 4)
    revs[1]["review"] = None
    revs[2]["author"] = None
    with SteamReplay({"10": revs}, details={"10": {"name": "Half-Life 2"}}) as server:
        res = collect(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=["10"], with_details=True))
    assert res["files"][0]["apps"]["10"]["skipped"] == 1
    rows = _lines(tmp_path / "raw/10.jsonl")
    assert [r["recommendationid"] for r in rows] == ["100000", "100002", "100003"] and "author" not in rows[1]
    prepared = prepare(config.build(PrepareConfig, {"inputs": [str(tmp_path / "raw")], "out": str(tmp_path / "sft.json"),
                                                    "val_size": 0, "min_chars": 1, "drop_spam": False}))
    assert prepared["formats"][str(tmp_path / "raw/10.jsonl")] == "collect-jsonl"


def test_one_failing_app_does_not_stop_the_others_and_a_rerun_retries_it(tmp_path, capsys):
    with SteamReplay({"10": _fake("10", 5), "999": _fake("999", 2), "11": _fake("11", 4)}) as server:
        server.answers["999"] = {"success": 2}
        with pytest.raises(UserError, match=r"collect: 1 app\(s\) failed \(above\); the others are saved"):
            run(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=["10,999,11"]))
        assert "app 999: " in capsys.readouterr().err
        with pytest.raises(UserError, match=r"collect: 1 app\(s\) failed \(above\); rerun the same command"):
            run(_cfg(server, tmp_path / "alone/{appid}.jsonl", appid=["999"]))  # no others to be saved
        assert len(_lines(tmp_path / "raw/10.jsonl")) == 5 and len(_lines(tmp_path / "raw/11.jsonl")) == 4
        for folder in ("raw", "alone"):  # a wrong id leaves nothing to resume beside the outputs
            assert sorted(p.name for p in (tmp_path / folder).glob("999*")) == ["999.log.jsonl"]
        res = collect(_cfg(server, tmp_path / "shared.jsonl", appid=["10,999,11"]))  # one shared file
        assert set(res["failed"]) == {"999"} and not res["complete"]
        assert len(_lines(tmp_path / "shared.jsonl")) == 9  # finished with the apps that succeeded
        state = json.loads((tmp_path / "shared.jsonl.state.json").read_text())
        assert "success=2" in state["apps"]["999"]["failed"] and not state["apps"]["999"]["done"]
        del server.answers["999"]
        res = collect(_cfg(server, tmp_path / "shared.jsonl", appid=["10,999,11"]))
        assert res["complete"] and len(_lines(tmp_path / "shared.jsonl")) == 11
        n = len(server.requests)
        res = collect(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=["10,999,11"]))
        assert res["complete"] and [f["skipped"] for f in res["files"]] == [True, False, True]
        assert len(_lines(tmp_path / "raw/999.jsonl")) == 2 and len(server.requests) == n + 2


def test_endless_duplicate_pages_and_cursor_cycles_end_the_app(tmp_path, steam):
    from steam_persona.reviews.collect import STALL_PAGES

    steam.faults = ["dups"] * 50  # the same reviews under ever new cursors
    res = collect(_cfg(steam, tmp_path / "a.jsonl"))
    assert res["files"][0]["apps"][APP]["end"] == "stalled" and len(steam.requests) == 1 + STALL_PAGES
    assert len(_lines(tmp_path / "a.jsonl")) == 50
    steam.faults, steam.requests = [None, ("cursor", cursor_for(APP, 0))], []  # page 2 points back to page 1
    res = collect(_cfg(steam, tmp_path / "b.jsonl"))
    assert res["files"][0]["apps"][APP]["end"] == "cycle" and len(steam.requests) == 3
    assert len(_lines(tmp_path / "b.jsonl")) == 100


def test_retry_after_as_an_http_date_or_above_backoff_max(tmp_path, steam):
    from email.utils import formatdate

    from steam_persona.reviews.collect_fetch import retry_after_seconds

    assert retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT", now=1792567680 - 5) == 5.0
    assert retry_after_seconds("4") == 4.0 and retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    steam.faults = [(429, {"Retry-After": formatdate(time.time() + 2, usegmt=True)}), (503, {"Retry-After": "0.4"})]
    t0 = time.monotonic()
    res = collect(_cfg(steam, tmp_path / "r.jsonl"))  # --backoff_max 0.005
    assert res["complete"] and res["retries"] == 2 and time.monotonic() - t0 >= 1.0 + 0.4
    log = [e for e in _lines(tmp_path / "r.log.jsonl") if e["event"] == "retry"]
    assert log[1]["retry_after_s"] == 0.4 and log[1]["wait_s"] >= 0.4


def test_a_retry_after_past_max_time_stops_at_once(tmp_path, steam):
    steam.faults = [(429, {"Retry-After": "50"})]
    t0 = time.monotonic()
    res = collect(_cfg(steam, tmp_path / "r.jsonl", max_time=5))
    assert time.monotonic() - t0 < 1.0 and res["retries"] == 0 and res["requests"] == 1
    assert res["stopped"].startswith("waiting 50.0 s to retry app 570980 page 1") and "would pass --max_time 5 s" in res["stopped"]
    r = CliRunner().invoke(main, ["collect", "--appid", APP, "--out", str(tmp_path / "r.jsonl"), "--base_url",
                                  steam.base_url, "--rate_limit", "0", "--max_time", "0.0001"])
    assert r.exit_code == 2 and "nothing was saved yet: rerun the same command later" in " ".join(r.output.split())


def test_timeout_bounds_a_whole_trickling_response_and_max_time_the_run(tmp_path, steam):
    steam.faults, steam.trickle_seconds = ["trickle"], 0.02  # one byte every 20 ms: never a read timeout
    t0 = time.monotonic()
    res = collect(_cfg(steam, tmp_path / "a.jsonl", timeout=0.5))
    assert res["complete"] and res["retries"] == 1 and time.monotonic() - t0 < 2.5
    assert "no whole answer within --timeout 0.5 s" in [e for e in _lines(tmp_path / "a.log.jsonl") if e["event"] == "retry"][0]["problem"]
    steam.faults = ["trickle"] * 3
    t0 = time.monotonic()
    res = collect(_cfg(steam, tmp_path / "b.jsonl", timeout=30, max_time=0.6))
    assert 0.5 < time.monotonic() - t0 < 1.5 and res["stopped"] == "time bound --max_time 0.6 s reached during a request"
    # stopped before its first page: nothing to resume, so no empty .part or state is left (trial 39 (3))
    assert not [p.name for p in tmp_path.glob("b.jsonl*")]


def test_timeout_cuts_a_server_that_stalls_mid_body_on_time(tmp_path, steam):
    """A byte at 0.9 s, then nothing for 3 s: a per-read timeout of 1 s would wait until 1.9 s."""
    from steam_persona.reviews.collect_fetch import Fetcher

    steam.faults, steam.trickle_seconds, steam.slow_seconds = ["stall"], 0.9, 3.0
    fetch = Fetcher(_cfg(steam, tmp_path / "r.jsonl", timeout=1.0, max_retries=0), None)
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"no whole answer within --timeout 1 s after 1 tries"):
        fetch.get_json(f"{steam.base_url}/appreviews/{APP}", {"cursor": "*", "num_per_page": 5}, "page 1", lambda d: None)
    assert time.monotonic() - t0 < 1.6
    fetch.close()


def test_flags_are_checked_and_app_ids_deduplicated(tmp_path, steam, capsys):
    from steam_persona.reviews.collect import _appids

    assert _appids(config.build(CollectConfig, {"appid": ["10, 10", "11,10"]})) == ["10", "11"]
    for flag in ("max_time", "backoff_base", "backoff_max"):
        with pytest.raises(UserError, match="must be >= 0"):
            _appids(config.build(CollectConfig, {"appid": ["10"], flag: -1}))
    for flag in ("timeout", "rate_limit", "max_time", "backoff_base"):
        r = CliRunner().invoke(main, ["collect", "--appid", "10", "--out", str(tmp_path / "n.jsonl"), f"--{flag}",
                                      "nan", "--base_url", steam.base_url])
        assert r.exit_code == 2 and f"--{flag} nan: not a number" in r.output and "Traceback" not in r.output
    assert not list(tmp_path.iterdir()) and not steam.requests
    collect(_cfg(steam, tmp_path / "r.jsonl"))
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("app 570980 reviews")]
    assert lines[0].startswith("app 570980 reviews 50/266  pages 1  reviews/s ")  # plain progress: first and last
    assert lines[-1].startswith("app 570980 reviews 266/266  pages 7  reviews/s ") and len(lines) == 2


def test_prepare_skips_odd_review_records_with_a_warning_and_reads_string_verdicts(tmp_path):
    """Records an older collect (or another tool) wrote: one odd record no longer fails the file."""
    from steam_persona.reviews.prepare import PrepareConfig
    from steam_persona.reviews.prepare import run as prepare
    from steam_persona.reviews.sources import read

    revs = _fake("10", 5)
    revs[1]["review"] = None
    revs[2]["author"] = None  # read, with no playtime
    revs[3]["voted_up"] = "false"
    revs[4]["author"] = {"steamid": "4", "playtime_at_review": None, "playtime_forever": 120}
    src = tmp_path / "raw/10.jsonl"
    src.parent.mkdir()
    src.write_text("".join(json.dumps({**r, "appid": 10}) + "\n" for r in revs), encoding="utf-8")
    res = prepare(config.build(PrepareConfig, {"inputs": [str(src)], "out": str(tmp_path / "sft.json"), "val_size": 0,
                                               "app_name": ["Half-Life 2"], "min_chars": 1, "drop_spam": False,
                                               "dedup": False}))
    report = json.loads(Path(res["report"]).read_text(encoding="utf-8"))
    assert f"{src}: skipped 1 review record(s) without 'review' text or with odd fields (line 2)" in report["warnings"]
    assert len(json.loads((tmp_path / "sft.json").read_text(encoding="utf-8"))) == 4
    loaded = read(src, "zh")
    assert [(r.review_id, r.voted_up, r.playtime_hours) for r in loaded.reviews] == [
        ("100000", True, 10.0), ("100002", True, None), ("100003", False, 10.0), ("100004", True, 2.0)]


def test_a_typo_in_language_is_refused_and_an_interrupted_overwrite_resumes(tmp_path, steam):
    with pytest.raises(UserError, match="--language chinese: not a Steam API language code; did you mean schinese"):
        collect(_cfg(steam, tmp_path / "r.jsonl", language="chinese"))
    out = tmp_path / "r.jsonl"
    collect(_cfg(steam, out))
    steam.faults, steam.requests = [None, None] + ["malformed"] * 4, []
    assert set(collect(_cfg(steam, out, overwrite=True))["failed"]) == {APP}
    assert len(_lines(out)) == 266 and len(_lines(tmp_path / "r.jsonl.part")) == 100  # the old file stays until the end
    assert collect(_cfg(steam, out, overwrite=True))["complete"]  # resumes at page 3
    assert steam.requests[6]["query"]["cursor"] == cursor_for(APP, 100) and len(_lines(out)) == 266


def test_the_shown_total_grows_past_a_wrong_total_reviews():
    from steam_persona.reviews.collect import _Pager

    cfg = config.build(CollectConfig, {"appid": ["10"]})
    st = {"cursor": "x", "done": False, "end": None, "pages": 3, "reviews": 200, "skipped": 0, "total": 20}
    pager = _Pager("10", st, cfg, None, set(), None, lambda: None)
    assert pager.shown_total() == 200  # never "200/20"
    st["total"] = 2000
    assert pager.shown_total() == 2000
    st["done"] = True
    assert pager.shown_total() == 200  # done: what was saved, not Steam's estimate
    pager.cfg = config.build(CollectConfig, {"appid": ["10"], "max_reviews": 500})
    st["done"] = False
    assert pager.shown_total() == 500


def test_the_log_tells_runs_apart(tmp_path, steam):
    out = tmp_path / "r.jsonl"
    steam.faults = [None] + ["malformed"] * 4
    collect(_cfg(steam, out))
    collect(_cfg(steam, out))
    log = _lines(tmp_path / "r.log.jsonl")
    starts = [e for e in log if e["event"] == "start"]
    assert [s["resumed"] for s in starts] == [False, True] and starts[0]["pid"] == os.getpid()
    assert starts[0]["query"] == {"language": "schinese", "filter": "recent", "review_type": "all",
                                  "purchase_type": "all", "day_range": None}
    assert [e["event"] for e in log if e["event"] in ("start", "app_failed", "end")] == [
        "start", "app_failed", "end", "start", "end"]
    assert [e["complete"] for e in log if e["event"] == "end"] == [False, True]


def test_an_app_without_reviews_writes_no_file_and_prepare_reads_the_folder(tmp_path, capsys):
    from steam_persona.reviews.prepare import PrepareConfig
    from steam_persona.reviews.prepare import run as prepare

    with SteamReplay({"10": _fake("10", 3), "5": []}, details={"10": {"name": "Half-Life 2"}}) as server:
        res = run(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=["10,5"]))
        assert res["complete"] and not (tmp_path / "raw/5.jsonl").exists()
        assert not (tmp_path / "raw/5.jsonl.part").exists()
        state = json.loads((tmp_path / "raw/5.jsonl.state.json").read_text())
        assert state["complete"] and state["apps"]["5"]["reviews"] == 0 and state["apps"]["5"]["done"]
        err = capsys.readouterr().err
        assert "0 reviews, 1 page (Steam has none with these settings)" in err and "(not written: no reviews)" in err
        n = len(server.requests)
        collect(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=["10,5"]))
        assert len(server.requests) == n and "raw/5.jsonl: already complete (0 reviews)" in capsys.readouterr().err
        state_path = tmp_path / "raw/5.jsonl.state.json"  # a kill between removing .part and saving the state
        state_path.write_text(json.dumps({**json.loads(state_path.read_text()), "complete": False}))
        assert collect(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=["5"]))["complete"]
        assert json.loads(state_path.read_text())["complete"] and len(server.requests) == n
    (tmp_path / "raw/6.jsonl").write_text("")  # an empty output of an older collect
    prepared = prepare(config.build(PrepareConfig, {"inputs": [str(tmp_path / "raw")], "out": str(tmp_path / "sft.json"),
                                                    "val_size": 0, "min_chars": 1, "drop_spam": False,
                                                    "app_name": ["10=Half-Life 2"]}))
    assert list(prepared["formats"]) == [str(tmp_path / "raw/10.jsonl")]
    assert "raw/6.jsonl: skipped, empty" in " ".join(capsys.readouterr().err.split())


def test_prepare_skips_collects_side_files_in_a_file_list_with_a_note(tmp_path, capsys):
    from steam_persona.reviews import sources

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "10.jsonl").write_text(json.dumps({**_fake("10", 1)[0], "appid": 10}) + "\n")
    side = ["10.log.jsonl", "10.jsonl.state.json", "10.jsonl.lock", "11.jsonl.part", "12.jsonl"]
    for name in side:
        (raw / name).write_text("{}\n" if name != "12.jsonl" else "")
    assert sources.expand_inputs(sorted(str(p) for p in raw.iterdir())) == [raw / "10.jsonl"]
    err = " ".join(capsys.readouterr().err.split())
    assert "10.jsonl.state.json: skipped, collect's state/log/lock file" in err
    assert "11.jsonl.part: skipped, an unfinished collect output" in err and "12.jsonl: skipped, empty" in err
    assert sources.expand_inputs([str(raw)]) == [raw / "10.jsonl"]
    assert "11.jsonl.part: skipped" in capsys.readouterr().err
    with pytest.raises(UserError, match="nothing to read in .*every file was skipped"):
        sources.expand_inputs([str(raw / "11.jsonl.part")])


@pytest.mark.parametrize("fault,tries", [(500, 4), (403, 1)])  # 403 is not retried
def test_a_failed_appdetails_request_exits_2_after_the_other_apps(tmp_path, capsys, fault, tries):
    apps = {a: _fake(a, 2) for a in ("80", "81", "82")}
    with SteamReplay(apps, details={a: {"name": f"Game {a}"} for a in apps}) as server:
        server.details_faults = [fault] * tries  # app 80's appdetails fails every try
        with pytest.raises(UserError, match=r"appdetails request failed for app\(s\) 80 .*prepare would drop them "
                                             r"as unknown_game: rerun the same command"):
            run(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=["80,81,82"], with_details=True))
        assert [len(_lines(tmp_path / f"raw/{a}.jsonl")) for a in apps] == [2, 2, 2]
        assert not any(tmp_path.glob("raw/*.part"))
        assert not (tmp_path / "raw/80.appdetails.json").exists()
        assert json.loads((tmp_path / "raw/82.appdetails.json").read_text())["82"]["data"] == {"name": "Game 82"}
        assert "no appdetails: " in capsys.readouterr().err
        res = run(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=["80,81,82"], with_details=True))  # asks again
        assert not res["details_failed"] and (tmp_path / "raw/80.appdetails.json").exists()


def test_details_only_failures_and_overwrite_keep_good_entries(tmp_path):
    with SteamReplay({}, details={"80": {"name": "A"}, "81": {"name": "B"}}) as server:
        collect(_cfg(server, tmp_path / "s.jsonl", appid=["80,81"], details_only=True))
        del server.details["81"]  # Steam now answers success:false for 81
        server.details_faults = [502] * 4  # and 80's request keeps failing
        with pytest.raises(UserError, match=r"no appdetails for app\(s\) 80, 81"):
            run(_cfg(server, tmp_path / "s.jsonl", appid=["80,81"], details_only=True, overwrite=True))
    saved = json.loads((tmp_path / "s.appdetails.json").read_text())
    assert saved["80"]["data"] == {"name": "A"} and saved["81"]["data"] == {"name": "B"}


def test_a_wrong_id_in_a_shared_file_does_not_block_it_and_is_dropped_when_left_out(tmp_path, capsys):
    with SteamReplay({"90": _fake("90", 3), "92": _fake("92", 2)}) as server:
        server.answers["999"] = {"success": 2}
        with pytest.raises(UserError, match="leave a wrong app id out"):
            run(_cfg(server, tmp_path / "s.jsonl", appid=["90,999,92"]))
        assert len(_lines(tmp_path / "s.jsonl")) == 5 and not (tmp_path / "s.jsonl.part").exists()
        capsys.readouterr()
        res = run(_cfg(server, tmp_path / "s.jsonl", appid=["90,92"]))
        assert res["complete"] and not any(r["path"] == "/appreviews/999" for r in server.requests[-2:])
        err = " ".join(capsys.readouterr().err.split())
        assert "app 999 is not in this command; no longer collected" in err
        n = len(server.requests)
        collect(_cfg(server, tmp_path / "s.jsonl", appid=["90,92"]))
        assert len(server.requests) == n and len(_lines(tmp_path / "s.jsonl")) == 5
        state_path = tmp_path / "s.jsonl.state.json"  # a kill between finishing the file and saving the state
        state = json.loads(state_path.read_text())
        state_path.write_text(json.dumps({**state, "complete": False, "apps": {**state["apps"], "999": {
            **state["apps"]["999"], "done": False, "end": None, "failed": "success=2"}}}))
        del server.answers["999"]
        res = collect(_cfg(server, tmp_path / "s.jsonl", appid=["90,999,92"]))
        assert res["complete"] and len(_lines(tmp_path / "s.jsonl")) == 5  # 999 has no reviews here


def test_a_locked_output_fails_only_its_app_and_a_429_give_up_stops_the_run(tmp_path, capsys):
    from steam_persona.reviews import collect_state

    with SteamReplay({a: _fake(a, 2) for a in ("1", "2", "3")}) as server:
        with collect_state.locked(tmp_path / "raw/2.jsonl"):
            res = collect(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=["1,2,3"]))
        assert set(res["failed"]) == {"2"} and "another collect" in res["failed"]["2"]
        assert (tmp_path / "raw/3.jsonl").exists()
        server.faults = [429] * 4
        with pytest.raises(UserError, match="HTTP 429 \\(rate limit\\).*nothing was saved yet: rerun the same command "
                                            "later"):
            run(_cfg(server, tmp_path / "q/{appid}.jsonl", appid=["1,2,3"]))
        assert not any(r["path"] != "/appreviews/1" for r in server.requests[-4:])
        assert not (tmp_path / "q/2.jsonl.part").exists()  # app 2 was never started
        out = " ".join(capsys.readouterr().err.split())  # trial 25c: the summary named only app 1
        assert "app 2 │ not started (the run stopped first): a rerun collects it" in out and "app 3 │ not started" in out


def test_out_as_a_folder_unwritable_or_another_format_is_one_line_and_no_extension_warns(tmp_path, steam):
    (tmp_path / "raw").mkdir()
    for out in (tmp_path / "raw", f"{tmp_path}/new/"):
        r = CliRunner().invoke(main, ["collect", "--appid", APP, "--out", str(out), "--base_url", steam.base_url])
        assert r.exit_code == 2 and "a folder; name the file, e.g. --out " in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["collect", "--appid", APP, "--out", "/proc/x.jsonl", "--base_url", steam.base_url])
    assert r.exit_code == 2 and "/proc/x.jsonl: cannot write there" in r.output and "Traceback" not in r.output
    assert not steam.requests and not (tmp_path / "new").exists()
    r = CliRunner().invoke(main, ["collect", "--appid", APP, "--out", str(tmp_path / "raw/{appid}"), "--base_url",
                                  steam.base_url, "--rate_limit", "0", "--max_reviews", "5"])
    assert r.exit_code == 0 and "prepare reads only .jsonl, .json, .ndjson, .csv, .tsv and .parquet files from a " \
        "folder, so it skips this one there without a note; give it to prepare by name" in " ".join(r.output.split())
    for out, why in (("z.csv", "prepare reads a .csv file as a CSV table"), ("{appid}.TSV", "as a TSV table"),
                     ("z.parquet", "as Parquet"), ("y.jsonl.gz", "collect writes plain JSON lines, not gzip")):
        r = CliRunner().invoke(main, ["collect", "--appid", APP, "--out", str(tmp_path / "q" / out), "--base_url",
                                      steam.base_url])
        assert r.exit_code == 2 and why in r.output and "name it .jsonl" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "q").exists()
    n = len(steam.requests)
    r = CliRunner().invoke(main, ["collect", "--appid", APP, "--out", str(tmp_path / "raw/w.ndjson"), "--base_url",
                                  steam.base_url, "--rate_limit", "0", "--max_reviews", "5"])
    assert r.exit_code == 0 and "prepare reads only" not in r.output and len(steam.requests) > n


def test_raising_max_reviews_loses_nothing_when_the_server_ignores_small_pages(tmp_path, steam, archive):
    steam.min_page = 10
    out = tmp_path / "r.jsonl"
    collect(_cfg(steam, out, max_reviews=7))
    collect(_cfg(steam, out, max_reviews=20))
    assert [r["recommendationid"] for r in _lines(out)] == [r["recommendationid"] for r in archive[:20]]


def test_overwrite_of_a_shared_file_refuses_to_drop_apps_not_named(tmp_path):
    with SteamReplay({a: _fake(a, 2) for a in ("90", "92", "93")}) as server:
        collect(_cfg(server, tmp_path / "s.jsonl", appid=["90,92,93"]))
        with pytest.raises(UserError, match=r"--overwrite would drop the reviews of app\(s\) 93, which this command"):
            collect(_cfg(server, tmp_path / "s.jsonl", appid=["90,92"], overwrite=True))
        assert len(_lines(tmp_path / "s.jsonl")) == 6


@pytest.mark.parametrize("value", ["inf", "1e20", "Fri, 01 Jan 2100 00:00:00 GMT"])
def test_an_absurd_retry_after_stops_the_run_cleanly(tmp_path, steam, value):
    steam.faults = [(429, {"Retry-After": value})]
    with pytest.raises(UserError, match=r"Steam asks to wait .* s \(Retry-After\) .*rerun later; nothing was saved yet: "
                                        r"rerun the same command later$") as e:
        run(_cfg(steam, tmp_path / "r.jsonl", max_time=0))
    assert len(steam.requests) == 1
    assert "e+" not in str(e.value)  # trial 39 (4): 1e+20 s; the seconds as a whole number
    assert not [p.name for p in tmp_path.glob("r.jsonl*")]  # trial 39 (3): an empty .part and no state were left


def test_a_long_wait_prints_a_line(tmp_path, steam, monkeypatch, capsys):
    from steam_persona.reviews import collect_fetch

    monkeypatch.setattr(collect_fetch, "LONG_WAIT_S", 0.01)
    steam.faults = [(503, {"Retry-After": "0.05"})]
    assert collect(_cfg(steam, tmp_path / "r.jsonl", max_reviews=5))["complete"]
    assert "HTTP 503 for app 570980 page 1 (cursor '*'): waiting 0 s (Steam's Retry-After) before retry 1 of 3" in \
        " ".join(capsys.readouterr().err.split())


def test_a_rejected_saved_cursor_names_the_fix_and_day_range_counts_only_with_filter_all(tmp_path, steam):
    out = tmp_path / "r.jsonl"
    collect(_cfg(steam, out, max_reviews=5))
    res = collect(_cfg(steam, out, max_reviews=5, day_range=30))  # Steam ignores day_range with filter recent
    assert res["files"][0]["skipped"]
    with pytest.raises(UserError, match=r"collected with other settings: --filter all \(file: recent\)"):
        collect(_cfg(steam, out, filter="all", day_range=30))
    state = json.loads((tmp_path / "r.jsonl.state.json").read_text())
    state["apps"][APP]["cursor"] = "AoJexpired+5/zzzz=="
    (tmp_path / "r.jsonl.state.json").write_text(json.dumps(state))
    n = len(steam.requests)
    failed = collect(_cfg(steam, out, max_reviews=10))["failed"][APP]
    assert "HTTP 400 (cursor rejected) for app 570980 page 2 (cursor 'AoJexpired+5/zzzz=='): Steam rejected the " \
        "saved cursor" in failed and len(steam.requests) == n + 1  # not retried
    assert "rerun the same command once, and if it is rejected again, pass --overwrite" in failed
    assert len(_lines(out)) == 5


def test_a_cursor_rejected_within_the_run_is_retried_as_a_hiccup(tmp_path, steam):
    steam.faults = [None, 400]
    assert collect(_cfg(steam, tmp_path / "r.jsonl", max_reviews=100))["complete"]
    assert len(_lines(tmp_path / "r.jsonl")) == 100
    assert [e["problem"] for e in _lines(tmp_path / "r.log.jsonl") if e["event"] == "retry"] == [
        "HTTP 400 (cursor rejected)"]
    steam.faults = [None] + [400] * 4
    failed = collect(_cfg(steam, tmp_path / "q.jsonl", max_reviews=100))["failed"][APP]
    assert "HTTP 400 (cursor rejected) after 4 tries; progress is saved, rerun the same command" in failed
    assert "saved cursor" not in failed and "--overwrite" not in failed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_the_run_like_ctrl_c(tmp_path, steam, capsys, sig, stop_signals_at_default):
    import threading

    steam.delay = 0.05
    errors.stopped_by(None)
    threading.Timer(0.2, os.kill, (os.getpid(), sig)).start()
    with pytest.raises(KeyboardInterrupt):
        collect(_cfg(steam, tmp_path / "r.jsonl", num_per_page=5))
    assert "interrupted; progress is saved" in capsys.readouterr().err
    assert errors.stop_status() == 128 + sig  # the CLI's exit status
    assert [e["event"] for e in _lines(tmp_path / "r.log.jsonl")][-2:] == ["error", "end"]
    assert signal.getsignal(sig) is signal.SIG_DFL
    steam.delay = 0
    assert collect(_cfg(steam, tmp_path / "r.jsonl", num_per_page=50))["complete"]
    assert len(_lines(tmp_path / "r.jsonl")) == 266


def test_an_overwrite_that_finds_no_review_keeps_the_complete_file_and_its_settings(tmp_path):
    with SteamReplay({"5": _fake("5", 3), "1": _fake("1", 2)}) as server:
        out = tmp_path / "s.jsonl"
        collect(_cfg(server, out, appid=["5,1"]))
        state = (tmp_path / "s.jsonl.state.json").read_text()
        server.reviews.update({"5": [], "1": []})  # Steam now answers success:1 without reviews
        for kw in ({}, {"language": "english"}):
            with pytest.raises(UserError, match=r"s.jsonl: --overwrite collected no review .* so the 5 reviews it "
                                                r"holds are kept as they were"):
                run(_cfg(server, out, appid=["5,1"], overwrite=True, **kw))
            assert len(_lines(out)) == 5 and not (tmp_path / "s.jsonl.part").exists()
            assert (tmp_path / "s.jsonl.state.json").read_text() == state
        n = len(server.requests)
        assert collect(_cfg(server, out, appid=["5,1"]))["files"][0]["skipped"] and len(server.requests) == n
        (tmp_path / "s.jsonl.state.json").unlink()  # a file whose settings were not recorded
        with pytest.raises(UserError, match="--overwrite collected no review"):
            run(_cfg(server, out, appid=["5,1"], overwrite=True))
        assert len(_lines(out)) == 5 and not (tmp_path / "s.jsonl.state.json").exists()
        server.reviews["5"] = _fake("5", 4)
        assert collect(_cfg(server, out, appid=["5,1"], overwrite=True))["complete"] and len(_lines(out)) == 4
        assert "replaces" not in json.loads((tmp_path / "s.jsonl.state.json").read_text())


@pytest.mark.parametrize("text", ['{"1": {"succ', "[]"])
def test_a_corrupt_appdetails_file_is_one_line_naming_it(tmp_path, text):
    with SteamReplay({"1": _fake("1", 2)}, details={"1": {"name": "A"}}) as server:
        (tmp_path / "raw").mkdir()
        (tmp_path / "raw/1.appdetails.json").write_text(text)
        r = CliRunner().invoke(main, ["collect", "--appid", "1", "--out", str(tmp_path / "raw/{appid}.jsonl"),
                                      "--with_details", "true", "--base_url", server.base_url, "--rate_limit", "0"])
    assert r.exit_code == 2 and "Traceback" not in r.output and r.exception.__class__ is SystemExit
    assert "1.appdetails.json: unreadable appdetails file: not" in r.output
    assert "delete it and rerun to fetch it again" in " ".join(r.output.split())
    assert len(_lines(tmp_path / "raw/1.jsonl")) == 2 and (tmp_path / "raw/1.appdetails.json").read_text() == text


def test_a_lone_surrogate_in_a_review_is_kept_escaped_and_prepare_drops_it(tmp_path):
    """Trial 39 (1, 2): Steam's JSON can hold half an emoji ("\\ud83d"); collect died writing it (UnicodeEncodeError,
    a page half-written, every rerun the same) and so did prepare's output."""
    from steam_persona.reviews.prepare import PrepareConfig
    from steam_persona.reviews.prepare import run as prepare

    revs = _fake("10", 3)
    revs[1]["review"] = "Great boss fights, half an emoji \ud83d and a proper ending, worth every cent."
    with SteamReplay({"10": revs}) as server:
        collect(_cfg(server, tmp_path / "raw/{appid}.jsonl", appid=["10"]))
    raw = (tmp_path / "raw/10.jsonl").read_bytes()
    assert b"half an emoji \\ud83d and" in raw and raw.decode("utf-8")  # escaped as Steam sent it: valid UTF-8
    assert _lines(tmp_path / "raw/10.jsonl")[1]["review"] == revs[1]["review"]
    out = tmp_path / "sft.json"
    prepare(config.build(PrepareConfig, {"inputs": [str(tmp_path / "raw")], "out": str(out), "val_size": 0,
                                         "app_name": ["10=Ten"], "language": ["all"]}))
    texts = [r["output"] for r in json.loads(out.read_text(encoding="utf-8"))]
    assert "Great boss fights, half an emoji and a proper ending, worth every cent." in texts
