"""`steam-train prepare` on file shapes users have, one small synthetic file per quirk (written here;
no real reviews): each asserts the texts, verdicts and playtimes read, not only that it ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steam_persona.common.errors import UserError
from steam_persona.reviews import sources

EN = ["Tight combat and a map that rewards curiosity, well worth the price.",
      "The story drags in the middle act but the boss fights carry it home.",
      "Crashes every hour on my machine,\nrefunded after two evenings of trying."]


def _steam(i: int, text: str) -> dict:
    """A raw appreviews review (../shared/reference/steam-api.md): author nested, playtime in minutes."""
    return {"recommendationid": str(100 + i), "language": "english", "review": text, "voted_up": i % 2 == 0,
            "votes_up": i, "timestamp_created": 1700000000,
            "author": {"steamid": f"7656119800000000{i}", "playtime_forever": 120 * (i + 1),
                       "playtime_at_review": 60 * (i + 1)}}


def _page(reviews: list[dict]) -> dict:
    return {"success": 1, "query_summary": {"num_reviews": len(reviews)}, "reviews": reviews, "cursor": "AoJ4"}


def _read(path: Path, text: str) -> sources.Loaded:
    path.write_text(text, encoding="utf-8", newline="")
    return sources.read(path)


def _values(loaded: sources.Loaded) -> list[tuple]:
    return [(r.text, r.voted_up, r.playtime_hours, r.game_name, r.review_id) for r in loaded.reviews]


def test_a_paged_download_saved_as_a_list_or_as_json_lines(tmp_path):
    pages = [_page([_steam(0, EN[0])]), _page([_steam(1, EN[1]), _steam(2, EN[2])]), _page([])]
    want = [(EN[0], True, 1.0, None, "100"), (EN[1], False, 2.0, None, "101"), (EN[2], True, 3.0, None, "102")]
    listed = _read(tmp_path / "pages.json", json.dumps(pages))
    lines = _read(tmp_path / "pages.jsonl", "".join(json.dumps(p) + "\n" for p in pages))
    for loaded in (listed, lines):
        assert (loaded.format, loaded.container, _values(loaded)) == ("api-page", "3 pages", want)
    assert listed.reviews[2].where.endswith("pages.json: page 2 review 2")
    assert "(3 pages)" in lines.describe()


def test_a_dict_of_id_to_record(tmp_path):
    flat = _read(tmp_path / "byid.json", json.dumps(
        {f"r{i}": {"review": t, "voted_up": "no" if i == 1 else "yes", "app_name": "Hades"} for i, t in enumerate(EN)}))
    assert (flat.format, flat.container) == ("table", "records keyed by id")
    assert _values(flat) == [(EN[0], True, None, "Hades", "r0"), (EN[1], False, None, "Hades", "r1"),
                             (EN[2], True, None, "Hades", "r2")]
    steam = _read(tmp_path / "byid_steam.json", json.dumps({str(100 + i): _steam(i, t) for i, t in enumerate(EN)}))
    assert _values(steam) == [(EN[0], True, 1.0, None, "100"), (EN[1], False, 2.0, None, "101"),
                              (EN[2], True, 3.0, None, "102")]


def test_flattened_steam_records_keep_playtime_author_and_game(tmp_path):
    """``author.playtime_at_review`` / ``author_playtime_forever`` flattened beside the Steam fields,
    and a game column beside review + voted_up: read as a table, nothing dropped."""
    dotted = []
    for i, t in enumerate(EN):
        rec = _steam(i, t)
        dotted.append({**rec, **{f"author.{k}": v for k, v in rec.pop("author").items()}} | {"review": t})
    loaded = _read(tmp_path / "dotted.json", json.dumps([{k: v for k, v in r.items() if k != "author"} for r in dotted]))
    assert loaded.columns["playtime_minutes"] == "author.playtime_at_review"  # at review time, not today's
    assert [(r.playtime_hours, r.author) for r in loaded.reviews] == [(1.0, "76561198000000000"),
                                                                      (2.0, "76561198000000001"),
                                                                      (3.0, "76561198000000002")]
    under = _read(tmp_path / "under.jsonl", "".join(json.dumps(
        {"review": t, "voted_up": i != 1, "author_steamid": "7656", "author_playtime_forever": 90, "app_name": "Hades"})
        + "\n\n" for i, t in enumerate(EN)))
    assert _values(under) == [(EN[0], True, 1.5, "Hades", None), (EN[1], False, 1.5, "Hades", None),
                              (EN[2], True, 1.5, "Hades", None)]


def test_kaggle_dump_prefers_playtime_at_review(tmp_path):
    header = ("app_id,app_name,review_id,language,review,timestamp_created,recommended,votes_helpful,"
              "author.steamid,author.playtime_forever,author.playtime_at_review\n")
    rows = "".join(f'292030,The Witcher 3,{9 + i},english,"{t}",1611381629,{i != 1},{i},765611990,{600 * (i + 1)},'
                   f"{60 * (i + 1)}\r\n" for i, t in enumerate(EN))
    loaded = _read(tmp_path / "dataset.csv", header + rows + "\r\n")
    assert _values(loaded) == [(EN[0], True, 1.0, "The Witcher 3", "9"), (EN[1], False, 2.0, "The Witcher 3", "10"),
                               (EN[2], True, 3.0, "The Witcher 3", "11")]


def test_playtime_unit_from_the_header_or_the_value(tmp_path):
    """Minutes or hours as the header says (``Playtime (minutes)``, ``playtime_hrs``, ``游戏时长(分钟)``);
    an hours column whose cells say ``min`` / ``分钟`` is read as minutes."""
    for header, cells, want in (("playtime_minutes", ["90", "30", "600"], [1.5, 0.5, 10.0]),
                                ("Playtime (minutes)", ["90", "30", "600"], [1.5, 0.5, 10.0]),
                                ("playtime_mins", ["90", "30", "600"], [1.5, 0.5, 10.0]),
                                ("游戏时长(分钟)", ["90", "30", "600"], [1.5, 0.5, 10.0]),
                                ("Playtime (hours)", ["1.5", "0.5", "10"], [1.5, 0.5, 10.0]),
                                ("playtime_hrs", ["1.5", "0.5", "10"], [1.5, 0.5, 10.0]),
                                ("游戏时长（小时）", ["1.5", "0.5", "10"], [1.5, 0.5, 10.0]),
                                ("Hours", ["90 min", "30 分钟", "10 hrs on record"], [1.5, 0.5, 10.0])):
        rows = "".join(f'"{t}",{c!r}\n'.replace("'", '"') for t, c in zip(EN, cells))
        loaded = _read(tmp_path / "t.csv", f'review,"{header}"\n{rows}')
        assert [r.playtime_hours for r in loaded.reviews] == want, header
        assert [r.text for r in loaded.reviews] == EN


def test_excel_unicode_text_is_read_and_utf16_without_bom_is_named(tmp_path):
    """Excel's "Unicode text": UTF-16LE with a byte-order mark, tab-separated, CRLF."""
    table = "review\trecommended\tHours\r\n" + "".join(f'"{t}"\t{"Not Recommended" if i == 1 else "Recommended"}\t{i}.5\r\n'
                                                      for i, t in enumerate(EN))
    src = tmp_path / "export.txt"
    src.write_bytes(table.encode("utf-16"))
    loaded = sources.read(src)
    assert [(r.text, r.voted_up, r.playtime_hours) for r in loaded.reviews] == [
        (EN[0], True, 0.5), (EN[1], False, 1.5), (EN[2], True, 2.5)]
    assert "(TSV), UTF-16 (3 reviews" in loaded.describe()
    src.write_bytes(table.encode("utf-16-le"))
    with pytest.raises(UserError, match=r"export.txt: looks UTF-16 without a byte-order mark .*--encoding utf-16-le"):
        sources.read(src)
    assert len(sources.read(src, encoding="utf-16-le").reviews) == 3


def test_json_lines_with_blank_lines_and_trailing_commas(tmp_path):
    recs = [json.dumps({"review": t, "voted_up": i != 1, "app_name": "Hades"}) for i, t in enumerate(EN)]
    loaded = _read(tmp_path / "r.jsonl", f"{recs[0]},\n\n{recs[1]},\r\n,\n{recs[2]}\n\n")
    assert _values(loaded) == [(EN[0], True, None, "Hades", None), (EN[1], False, None, "Hades", None),
                               (EN[2], True, None, "Hades", None)]
    assert [r.where.rsplit(" ", 1)[1] for r in loaded.reviews] == ["1", "3", "5"]


def test_one_column_file_headed_by_a_review_alias(tmp_path):
    loaded = _read(tmp_path / "only.csv", "评论\n" + "".join(f'"{t}"\n' for t in EN))
    assert [r.text for r in loaded.reviews] == EN and loaded.columns == {"review": "评论"}
