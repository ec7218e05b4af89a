"""Recipes: every shipped recipe loads; strict keys with suggestions; type conversion; overrides."""

from pathlib import Path

import pytest

from unifashion_core.config import Recipe, dump_recipe, load_recipe, recipe_from_dict, replace
from unifashion_core.errors import UserError

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_there_are_the_shipped_recipes():
    names = {p.stem for p in RECIPES}
    assert {"tiny", "demo", "fashiongen", "fashioniq", "vitonhd"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_loads_and_opens_with_a_comment(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.name == path.stem
    header = path.read_text().splitlines()[0]
    assert header.startswith(f"# {path.stem}:")
    assert "unifashion " in path.read_text().split("\nname:")[0]  # the command that runs it


def test_paper_recipes_carry_the_paper_hyper_parameters():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "fashiongen.yaml")
    assert recipe.train.retrieval.lr == 2e-5 and recipe.train.retrieval.betas == (0.9, 0.98)
    assert recipe.train.retrieval.eps == 1e-7 and recipe.train.retrieval.weight_decay == 0.05
    assert recipe.train.retrieval.schedule == "onecycle"
    assert recipe.model.captioner.lora_r == 128 and recipe.model.captioner.lora_alpha == 256
    assert recipe.train.caption.betas == (0.9, 0.99) and recipe.train.caption.warmup_ratio == 0.03
    assert recipe.train.generate.lr == 1e-4 and recipe.train.generate.schedule == "constant"
    assert recipe.model.qformer.num_query_tokens == 32 and recipe.data.max_text_length == 64


def test_unknown_key_names_the_closest_valid_one(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ntrain:\n  retrieval: {lrr: 1}\n")
    with pytest.raises(UserError, match=r"train\.retrieval\.lrr.*did you mean 'train\.retrieval\.lr'"):
        load_recipe(path)
    with pytest.raises(UserError, match=r"'trian\.lr'.*did you mean 'train'"):
        load_recipe(RECIPES[0], ["trian.lr=1"])


def test_numbers_given_as_strings_convert_and_bad_types_are_refused():
    recipe = recipe_from_dict({"train": {"retrieval": {"lr": "3e-4", "max_steps": "10"}}})
    assert recipe.train.retrieval.lr == pytest.approx(3e-4)
    assert recipe.train.retrieval.max_steps == 10
    with pytest.raises(UserError, match="max_steps must be a int"):
        recipe_from_dict({"train": {"retrieval": {"max_steps": 1.5}}})
    with pytest.raises(UserError, match="choose one of"):
        recipe_from_dict({"model": {"vision": {"name": "resnet"}}})


def test_out_of_range_generator_and_ema_settings_are_refused():
    with pytest.raises(UserError, match="query_mix weights must be >= 0 with a positive sum"):
        recipe_from_dict({"model": {"generator": {"query_mix": {"text": 0, "image": 0, "multimodal": 0}}}})
    with pytest.raises(UserError, match="query_mix weights"):
        recipe_from_dict({"model": {"generator": {"query_mix": {"text": -1}}}})
    with pytest.raises(UserError, match=r"ema_decay must be in \[0, 1\)"):
        recipe_from_dict({"train": {"generate": {"ema_decay": 1.0}}})
    with pytest.raises(UserError, match="model.zero_shot_image_weight must be between 0.0 and 1.0"):
        recipe_from_dict({"model": {"zero_shot_image_weight": 1.5}})


def test_overrides_nested_keys_lists_and_syntax_errors(tmp_path):
    base = RECIPES[0]
    recipe = load_recipe(base, ["train.retrieval.lr=3e-4", "train.stages=[retrieval]", "loss.itm_weight=0"])
    assert recipe.train.retrieval.lr == pytest.approx(3e-4)
    assert recipe.train.stages == ("retrieval",)
    assert recipe.loss.itm_weight == 0.0
    with pytest.raises(UserError, match="key=value"):
        load_recipe(base, ["train.retrieval.lr"])
    with pytest.raises(UserError, match="is a value"):
        load_recipe(base, ["seed.x=1"])
    # YAML 1.1 reads a bare `no` as false; the choice named "no" is what was meant
    assert load_recipe(base, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(UserError, match="choose one of no, fp16, bf16"):
        load_recipe(base, ["train.mixed_precision=yes"])


def test_missing_unreadable_and_malformed_recipes(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(bad)
    twice = tmp_path / "twice.yaml"  # PyYAML alone keeps the last of two equal keys without a word
    twice.write_text("name: x\ndata:\n  max_text_length: 24\n  max_text_length: 32\n")
    with pytest.raises(UserError, match="'max_text_length' appears twice in one mapping \\(line 4\\)"):
        load_recipe(twice)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(UserError, match="mapping"):
        load_recipe(scalar)


def test_resolved_recipe_round_trips_through_yaml(tmp_path):
    recipe = load_recipe(RECIPES[0], ["seed=7"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_recipe(recipe))
    assert load_recipe(path) == recipe
    assert replace(recipe, ["seed=8"]).seed == 8
