"""`steam-train prepare`'s outputs and flags checked before anything is read or written: an output that is an
input, --out's suffix, --register --name, the game-name flags and the numeric selection flags (trial 32)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from steam_persona.cli import main

EN = ["Tight combat and a map that rewards curiosity, well worth the price.",
      "The story drags in the middle act but the boss fights carry it home.",
      "Crashes every hour on my machine, refunded after two evenings of trying.",
      "Co-op with friends is where this shines, solo play gets repetitive fast."]


def _csv(path: Path, rows: list[list] | None = None, header: tuple[str, ...] = ("review", "app_name")) -> Path:
    buf = io.StringIO()
    csv.writer(buf).writerows([list(header), *(rows if rows is not None else [[t, "Hades"] for t in EN])])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def _prepare(*args: str):
    return CliRunner().invoke(main, ["prepare", *map(str, args), "--language", "english"])


def _refused(r, *parts: str) -> str:
    """The one error line of an exit-2 run that names every part."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    line = r.output.strip().replace("\n", " ")
    assert all(p in line for p in parts), r.output
    return line


@pytest.mark.parametrize("name,flags,named", [
    ("raw.json", ["--out", "{src}"], "--out"),
    ("raw.json", ["--out", "{dir}/./raw.json"], "--out"),
    ("raw_val.json", ["--out", "{dir}/raw_train.json", "--report", "{dir}/o/r.json"], "--out"),
    ("raw.csv", ["--out", "{dir}/o/t.json", "--report", "{src}"], "--report"),
    ("raw.md", ["--out", "{dir}/o/t.json", "--report", "{dir}/raw.json"], "--report"),
    ("raw.csv", ["--out", "{dir}/o/t.json", "--register", "{src}", "--name", "s"], "--register"),
])
def test_an_output_that_is_an_input_file_is_refused_before_reading(tmp_path, name, flags, named):
    """B0: `prepare X --out X` replaced the raw input with the SFT set. Any output (its val split, the report and
    the files beside it, the registry; by another spelling too) that is an input file is refused, the input kept."""
    src = _csv(tmp_path / name)
    before = src.read_bytes()
    args = [f.format(src=src, dir=tmp_path) for f in flags]
    _refused(_prepare(src, *args), "is also an input", "prepare would replace your raw data", f"give another {named}")
    assert src.read_bytes() == before and not (tmp_path / "o").exists()


def test_a_link_to_the_input_as_out_is_refused(tmp_path):
    src = _csv(tmp_path / "raw.json")
    (tmp_path / "link.csv").symlink_to(src)
    _refused(_prepare(tmp_path / "link.csv", "--out", src), "is also an input", "give another --out")
    assert src.read_text(encoding="utf-8").startswith("review,")


def test_an_input_folder_file_named_as_out_is_refused_and_a_rerun_skips_its_outputs(tmp_path):
    """In a folder, a raw file that --out names is refused; an earlier run's outputs there are skipped."""
    folder = tmp_path / "raw"
    src = _csv(folder / "reviews.json")
    src.write_text(json.dumps([{"review": t, "app_name": "Hades"} for t in EN]), encoding="utf-8")
    _refused(_prepare(folder, "--out", src), f"--out {src} is also an input", "give another --out")
    assert json.loads(src.read_text(encoding="utf-8"))[0]["review"] == EN[0]
    reg = folder / "reg.json"
    args = [folder, "--out", folder / "t.json", "--val_size", "1", "--register", reg, "--name", "s"]
    assert _prepare(*args).exit_code == 0
    again = _prepare(*args)
    assert again.exit_code == 0, again.output
    assert f"note {folder}: skipped 4 outputs of the earlier run: prepare_lengths.png, reg.json, t.json, t_val.json (" \
        in again.output.replace("\n", "") and again.output.count("note ") == 1, again.output


@pytest.mark.parametrize("out,fix", [("q/c.csv", "q/c.json"), ("q/c.jsonl", "q/c.json"), ("q/c", "q/c.json"),
                                     ("q/c.json.gz", "q/c.json")])
def test_out_without_the_json_suffix_is_refused(tmp_path, out, fix):
    """B4: `--out q/c.csv` wrote a JSON array under a .csv name that validate then called raw reviews."""
    src = _csv(tmp_path / "raw.csv")
    line = _refused(_prepare(src, "--out", tmp_path / out), "prepare writes an alpaca JSON array", "name --out …json")
    assert line.endswith(f"e.g. --out {tmp_path / fix}") and not (tmp_path / "q").exists()
    assert _prepare(src, "--out", tmp_path / "q/C.JSON").exit_code == 0


@pytest.mark.parametrize("name,problem,fix", [
    (" steam ", "surrounding spaces", "steam"), ("a,b", "a comma", "a_b"), ("bad name/..", "a path separator",
                                                                             "bad_name_.."),
    ("x\\y", "a path separator", "x_y"), ("", "--register needs --name", ""), (" ", "surrounding spaces", "steam_reviews"),
])
def test_a_register_name_nobody_could_use_is_refused(tmp_path, name, problem, fix):
    """B5: `--register --name ' steam '` or `'a,b'` was registered, then no --dataset could name it."""
    src = _csv(tmp_path / "raw.csv")
    line = _refused(_prepare(src, "--out", tmp_path / "o/t.json", "--register", tmp_path / "o/info.json",
                             "--name", name), problem)
    assert not fix or line.endswith(f"give e.g. --name {fix}")
    assert not (tmp_path / "o").exists()


def test_register_notes_an_entry_of_the_same_name_that_named_another_file(tmp_path):
    """N5: `--register` replaced `"s": {"file_name": "other.json"}` without a word."""
    src = _csv(tmp_path / "raw.csv")
    reg = tmp_path / "o/info.json"
    reg.parent.mkdir()
    reg.write_text(json.dumps({"s": {"file_name": "other.json"}, "keep": {"file_name": "k.json"}}), encoding="utf-8")
    args = [src, "--out", tmp_path / "o/t.json", "--register", reg, "--name", "s", "--val_size", "0"]
    r = _prepare(*args)
    assert r.exit_code == 0 and f"note replaced 's' in {reg} (it named other.json)" in r.output.replace("\n", ""), r.output
    assert json.loads(reg.read_text(encoding="utf-8"))["s"]["file_name"] == "t.json"
    again = _prepare(*args)
    assert again.exit_code == 0 and "replaced" not in again.output


@pytest.mark.parametrize("value", ["=Foo", "206500=", "=", " = Foo"])
def test_a_malformed_app_name_is_refused(tmp_path, value):
    """N12: `--app_name =Foo` named every game `=Foo`; `--app_name 206500=` was ignored."""
    src = _csv(tmp_path / "raw.csv", header=("review", "appid"), rows=[[t, "206500"] for t in EN])
    _refused(_prepare(src, "--out", tmp_path / "o/t.json", "--app_name", value),
             f"--app_name {value.strip()!r}: write NAME (one game) or APPID=NAME")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name,text,message", [
    ("an1.csv", "appid,name\n206500,Foo\nabc,Bar\n", "an1.csv: line 3: appid 'abc' is not a number"),
    ("an2.json", '{"206500": 5}', 'an2.json: "206500": the name is 5, not text; write {"206500": "NAME"}'),
    ("an3.json", '{"206500": ["Foo"]}', 'the name is ["Foo"], not text'),
    ("an4.json", '{"Foo": "Bar"}', "an4.json: key 'Foo' is not a Steam app id (digits)"),
])
def test_app_names_files_with_a_bad_row_or_value_are_refused(tmp_path, name, text, message):
    """N12: `--app_names` rows with a non-numeric appid were skipped silently; `{"206500": 5}` named the game 5."""
    src = _csv(tmp_path / "raw.csv", header=("review", "appid"), rows=[[t, "206500"] for t in EN])
    (tmp_path / name).write_text(text, encoding="utf-8")
    _refused(_prepare(src, "--out", tmp_path / "o/t.json", "--app_names", tmp_path / name), message)
    assert not (tmp_path / "o").exists()


def test_app_names_csv_and_json_name_the_games(tmp_path):
    src = _csv(tmp_path / "raw.csv", header=("review", "appid"), rows=[[t, "206500"] for t in EN])
    (tmp_path / "n.csv").write_text("appid,name\n,\n２０６５００,Foo\n", encoding="utf-8")
    r = _prepare(src, "--out", tmp_path / "o/t.json", "--app_names", tmp_path / "n.csv", "--val_size", "0")
    assert r.exit_code == 0, r.output
    assert {x["instruction"] for x in json.loads((tmp_path / "o/t.json").read_text(encoding="utf-8"))} == \
        {'As a veteran gamer, review the game "Foo".'}


@pytest.mark.parametrize("flag,value", [("--min_votes_up", "-1"), ("--min_playtime_hours", "-1"),
                                        ("--min_playtime_hours", "nan"), ("--min_playtime_hours", "inf"),
                                        ("--max_per_game", "-2"), ("--max_tags", "-1")])
def test_negative_or_nan_selection_flags_are_refused(tmp_path, flag, value):
    """N9: these took -1 or nan silently as "off", where --val_size or --min_chars refuse them."""
    src = _csv(tmp_path / "raw.csv")
    line = _refused(_prepare(src, "--out", tmp_path / "o/t.json", flag, value), flag, "finite number, 0 or more")
    assert line.count("--") == 1 + line.count("--help")
    assert not (tmp_path / "o").exists()


def test_negative_workers_name_only_that_flag(tmp_path):
    """N9: `--preprocessing_num_workers -3` was blamed on --copypasta_games too."""
    src = _csv(tmp_path / "raw.csv")
    line = _refused(_prepare(src, "--out", tmp_path / "o/t.json", "--preprocessing_num_workers", "-3"),
                    "--preprocessing_num_workers -3: must be 0 (one per CPU) or more")
    assert "copypasta" not in line
    _refused(_prepare(src, "--out", tmp_path / "o/t.json", "--copypasta_games", "1"),
             "--copypasta_games 1: must be 0 (off) or 2 or more")


@pytest.mark.parametrize("name,text,message", [
    ("page.json", "<!DOCTYPE html><html><body>Access Denied</body></html>", "not JSON but an HTML/XML page"),
    ("n.json", "42\n", "a JSON number (42), not review records"),
    ("s.jsonl", '"hello"', "a JSON string (\"hello\")"),
    ("z.json", "null", "a JSON null (null)"),
])
def test_a_json_file_that_holds_no_json_records_gets_a_json_message(tmp_path, name, text, message):
    """N2: an HTML page or a number saved as .json got CSV advice (no CSV/TSV header found)."""
    src = tmp_path / name
    src.write_text(text, encoding="utf-8")
    line = _refused(_prepare(src, "--out", tmp_path / "o/t.json"), f"{src}: {message}")
    assert "CSV" not in line and not (tmp_path / "o").exists()


def test_every_file_skipped_in_an_input_folder_gets_a_note(tmp_path):
    """N1: .txt, .png, .bak, a broken link and a pipe in an input folder were skipped without a word, though
    docs/data.md says every skipped file is named in the console and in the report's warnings."""
    folder = tmp_path / "mixed"
    _csv(folder / "reviews.csv")
    _csv(folder / "more_reviews.txt")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n")
    (folder / "r.csv.bak").write_text("x", encoding="utf-8")
    (folder / "x.json").symlink_to(folder / "gone.json")
    os.mkfifo(folder / "fifo.csv")
    (folder / ".hidden").mkdir()
    (folder / ".hidden/h.txt").write_text("x", encoding="utf-8")
    r = _prepare(folder, "--out", tmp_path / "o/t.json", "--report", tmp_path / "o/r.json")
    assert r.exit_code == 0, r.output
    text = r.output.replace("\n", "")
    for name, why in [("more_reviews.txt", "not a review file type (.txt)"), ("image.png", "not a review file type (.png)"),
                      ("r.csv.bak", "not a review file type (.bak)"), ("x.json", "a broken link"), ("fifo.csv", "not a regular file")]:
        assert f"note {folder / name}: skipped, {why}" in text, (name, r.output)
    assert "h.txt" not in text
    warnings = json.loads((tmp_path / "o/r.json").read_text(encoding="utf-8"))["warnings"]
    assert sum("skipped" in w for w in warnings) == 5


def test_a_rerun_into_the_input_folder_notes_its_report_files_as_outputs(tmp_path):
    folder = tmp_path / "data"
    _csv(folder / "reviews.csv")
    args = [folder, "--out", folder / "t.json", "--val_size", "0"]
    assert _prepare(*args).exit_code == 0
    again = _prepare(*args)
    assert again.exit_code == 0, again.output
    assert f"note {folder}: skipped 2 outputs of the earlier run: prepare_lengths.png, t.json (the outputs of " \
        "this prepare" in again.output.replace("\n", ""), again.output  # the report's .md is quiet, as a README
    assert "not a review file type" not in again.output and again.output.count("note ") == 1


def test_a_data_folders_readme_license_and_markdown_are_left_out_quietly(tmp_path):
    """Trial 33 F5: `prepare shared/data` noted `README.md: skipped, not a review file type (.md)`."""
    folder = tmp_path / "data"
    _csv(folder / "reviews.csv")
    for name in ("README.md", "README", "LICENSE.txt", "notes.MD", "sub/readme.txt"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text("about the data", encoding="utf-8")
    (folder / "other.txt").write_text("x", encoding="utf-8")
    r = _prepare(folder, "--out", tmp_path / "o/t.json", "--drop_unknown_game", "False")
    assert r.exit_code == 0, r.output
    assert r.output.count("note ") == 1 and "other.txt: skipped, not a review file type (.txt)" in r.output


def test_an_alpaca_set_in_the_input_folder_named_as_out_is_refused_though_laid_out_as_prepare_writes(tmp_path):
    """B0 in a folder: only files the earlier run's report names are skipped as its outputs; an alpaca set in the
    seed's (= prepare's) layout that --out names is the user's data."""
    folder = tmp_path / "data"
    _csv(folder / "reviews.csv")
    sft = folder / "steam_sft_sample.json"
    sft.write_text(json.dumps([{"instruction": "Review Hades.", "input": "", "output": EN[0]}], indent=2),
                   encoding="utf-8")
    before = sft.read_bytes()
    _refused(_prepare(folder, "--out", sft), f"--out {sft} is also an input", "give another --out")
    assert _prepare(folder, "--out", folder / "t.json").exit_code == 0  # a report now names t.json, not the set
    _refused(_prepare(folder, "--out", sft), f"--out {sft} is also an input")
    assert sft.read_bytes() == before


def test_an_earlier_output_whose_report_is_gone_is_refused_as_an_earlier_output(tmp_path):
    """Trial 33 F4: with the report deleted, the earlier train.json in the input folder was refused as "your raw
    data" with "give another --out", advice that makes the next run read the old set back in."""
    folder = tmp_path / "rd"
    _csv(folder / "reviews.csv")
    args = [folder, "--out", folder / "train.json", "--drop_unknown_game", "False"]
    assert _prepare(*args).exit_code == 0
    for p in folder.glob("prepare_report.*"):
        p.unlink()
    line = _refused(_prepare(*args), f"({folder / 'train.json'}) and looks like an earlier prepare output",
                    "delete it or move it out of the input folder")
    assert "raw data" not in line and line.endswith("(if it is your data, give another --out)")
