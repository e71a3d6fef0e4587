"""The review tool's plain code (``tools/review_client.py``, no ``dify_plugin``), run as the packaged
plugin imports it: ``python -m pytest tests`` in the unpacked plugin, where ``persona.py`` and
``server_client.py`` sit at the root. The main suite does that in ``tests/test_plugin_package.py``;
``tests/test_plugin_runtime.py`` runs the whole tool in the real ``dify_plugin`` runtime."""

from pathlib import Path

import pytest
import yaml

import persona
from tools.review_client import ReviewError, _max_tokens, _verdict_of, prompt_args

PLUGIN = Path(__file__).resolve().parents[1]


def test_review_prompt_is_the_training_format():
    msgs = persona.review_messages(None, **prompt_args(
        "《《Hollow Knight™》》", tags="动作，类银河战士恶魔城", verdict="auto", language="zh", length=None))
    instruction, input_text = persona.build_review_prompt("Hollow Knight", ["动作", "类银河战士恶魔城"])
    assert msgs == [{"role": "user", "content": persona.user_message(instruction, input_text)}]
    assert msgs[0]["content"] == "请以资深玩家的身份，点评一下《Hollow Knight》这款游戏。\n游戏类型标签：动作, 类银河战士恶魔城"


def test_review_prompt_options():
    msgs = persona.review_messages(persona.DEFAULT_SYSTEM, **prompt_args(
        "Celeste", None, "not_recommend", "en", "short", "Compare with Towerfall."))
    assert msgs[0] == {"role": "system", "content": persona.DEFAULT_SYSTEM}
    assert msgs[1]["content"] == ('As a veteran gamer, review the game "Celeste".\nVerdict: Not recommended\n'
                                  "Length: short, two or three sentences.\nCompare with Towerfall.")


@pytest.mark.parametrize("bad,needle", [(dict(game_name=" "), "game_name is required"),
                                        (dict(game_name="X", verdict="maybe"), "verdict"),
                                        (dict(game_name="X", language="fr"), "language"),
                                        (dict(game_name="X", length="epic"), "length")])
def test_review_prompt_refuses_bad_parameters(bad, needle):
    with pytest.raises(ReviewError, match=needle):
        prompt_args(**bad)


def test_tool_default_length_is_the_training_format():
    """Regression: the tool's YAML default used to be length=medium, which adds a 篇幅 line the model
    never saw in training. The default is now auto: exactly persona.build_review_prompt's record."""
    spec = yaml.safe_load((PLUGIN / "tools/write_steam_review.yaml").read_text(encoding="utf-8"))
    default = next(p for p in spec["parameters"] if p["name"] == "length")["default"]
    msgs = persona.review_messages(None, **prompt_args("Dota 2", "免费开玩, 多人, 竞技", "auto", "zh", default))
    assert msgs == [{"role": "user", "content": "请以资深玩家的身份，点评一下《Dota 2》这款游戏。\n游戏类型标签：免费开玩, 多人, 竞技"}]


@pytest.mark.parametrize("given", [["Hades"], ["Hades", ""], '["Hades"]', "['Hades']", ("Hades",)])
def test_a_game_name_given_as_a_one_item_list_is_that_name(given):
    assert prompt_args(given, language="en")["game_name"] == "Hades"


def test_a_game_name_list_of_several_games_is_refused():
    with pytest.raises(ReviewError, match="game_name must be one game, not a list of 2"):
        prompt_args(["Hades", "Celeste"])
    with pytest.raises(ReviewError, match="game_name is required"):
        prompt_args([])


@pytest.mark.parametrize("args, name", [(({"a": 1},), "game_name"), (([{"a": 1}],), "game_name"),
                                        (("Doom", {"a": 1}), "tags"), (("Doom", ["fps", {"a": 1}]), "tags"),
                                        (("Doom", '[["fps"]]'), "tags")])
def test_an_object_as_game_name_or_tags_is_refused_as_no_text(args, name):
    with pytest.raises(ReviewError, match=f"^{name} must be text, not an object; give e.g. "):
        prompt_args(*args)


def test_tags_as_a_list_are_joined_like_a_string():
    as_list = persona.review_messages(None, **prompt_args("Doom", ["fps", " retro ", ""], language="en"))
    assert as_list == persona.review_messages(None, **prompt_args("Doom", "fps, retro", language="en"))
    assert "['fps'" not in as_list[0]["content"]


@pytest.mark.parametrize("rendered", ['["fps", "retro"]', "['fps', 'retro']", '["fps", null, "retro"]'])
def test_tags_as_a_list_rendered_into_text_are_read_as_that_list(rendered):
    content = persona.review_messages(None, **prompt_args("Doom", rendered, language="en"))[0]["content"]
    assert content == persona.review_messages(None, **prompt_args("Doom", "fps, retro", language="en"))[0]["content"]
    assert "[" not in content and "None" not in content and "null" not in content


@pytest.mark.parametrize("value, expected", [(None, 500), ("", 500), ("7", 7), (12.0, 12), ("12.0", 12), (4096, 4096)])
def test_max_tokens_default_and_range(value, expected):
    assert _max_tokens(value, "auto") == expected
    assert _max_tokens(None, "short") == 200


@pytest.mark.parametrize("value", [0, -1, 4097, 99999, "abc", "inf", float("inf"), True, "nan"])
def test_max_tokens_outside_the_yaml_range_is_refused(value):
    with pytest.raises(ReviewError, match="max_tokens must be"):
        _max_tokens(value, "auto")


@pytest.mark.parametrize("value", [1.5, "2.7", "0.9", "1e1", "-5"])
def test_max_tokens_that_are_no_whole_number_are_refused_not_truncated(value):
    with pytest.raises(ReviewError, match=f"max_tokens must be a whole number of tokens, not {value!r}"):
        _max_tokens(value, "auto")


@pytest.mark.parametrize("asked, verdict", [("recommend", "recommend"), ("not recommend", "not_recommend"),
                                            ("auto", None), (None, None)])
def test_json_verdict_is_only_the_one_asked_for(asked, verdict):
    assert _verdict_of(asked) == verdict  # never guessed: "推荐指数：1/10，千万别买" opens with 推荐
