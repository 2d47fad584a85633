"""Search configuration: defaults, YAML, overrides and clear errors."""

from __future__ import annotations

import pytest

from certevo.population.errors import ConfigError
from certevo.search.config import SearchConfig, config_from_dict, load_config


def test_empty_config_is_the_digits_default(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    config = load_config(path)
    assert config == SearchConfig()
    assert config.data.name == "digits" and config.search.strategy == "nsga2"


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("search:\n  population_size: 6\n  rates:\n    crossover: 0.2\nmodel:\n  widths: [32, 16]\n")
    config = load_config(path, ["search.generations=2", "genome.activations=[relu,tanh]"])
    assert config.search.population_size == 6
    assert config.search.rates.crossover == 0.2
    assert config.search.rates.prune_regrow == SearchConfig().search.rates.prune_regrow
    assert config.model.widths == (32, 16)
    assert config.search.generations == 2
    assert config.genome.activations == ("relu", "tanh")


def test_round_trip_through_plain_data():
    config = load_config(None, ["search.strategy=coevolution", "search.extra_objectives=[clean_accuracy]"])
    assert config_from_dict(config.to_dict()) == config
    assert config.digest() == config_from_dict(config.to_dict()).digest()


def test_digest_ignores_where_it_runs():
    a = load_config(None, ["cluster.actors=1"])
    b = load_config(None, ["cluster.actors=2", "run_dir=elsewhere"])
    c = load_config(None, ["search.seed=1"])
    assert a.digest() == b.digest() != c.digest()


@pytest.mark.parametrize(
    "values, field, value_text, fix_text",
    [
        ({"serch": {}}, "serch", "{}", "the sections are"),
        ({"search": {"popsize": 3}}, "search.popsize", "3", "population_size"),
        ({"search": {"strategy": "greedy"}}, "search.strategy", "'greedy'", "nsga2, coevolution"),
        ({"search": {"population_size": 1}}, "search.population_size", "1", ">= 2"),
        ({"search": {"kstarts_score": "luck"}}, "search.kstarts_score", "'luck'", "magnitude"),
        ({"search": {"rates": {"crossover": 1.5}}}, "search.rates.crossover", "1.5", "probability"),
        ({"training": {"method": "adam"}}, "training.method", "'adam'", "crown-ibp"),
        ({"training": {"eps": 3}}, "training.eps", "3", "[0, 1]"),
        ({"certification": {"method": "exact"}}, "certification.method", "'exact'", "crown-optimized"),
        ({"genome": {"activations": ["swish"]}}, "genome.activations", "swish", "relu"),
        ({"genome": {"sparsities": [1.2]}}, "genome.sparsities", "1.2", "[0, 1)"),
        ({"data": {"name": "cifar"}}, "data.name", "'cifar'", "digits"),
        ({"cluster": {"actors": 0}}, "cluster.actors", "0", "positive"),
        ({"cluster": {"device": "tpu"}}, "cluster.device", "'tpu'", "cpu, cuda"),
        ({"cluster": {"gpus_per_actor": 0}}, "cluster.gpus_per_actor", "0", "0.25"),
        ({"cluster": {"batch_size": 0}}, "cluster.batch_size", "0", "128 on cuda"),
    ],
)
def test_bad_values_name_field_value_and_fix(values, field, value_text, fix_text):
    with pytest.raises(ConfigError) as info:
        config_from_dict(values)
    message = str(info.value)
    assert field in message and value_text in message and fix_text in message


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["search.generations"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    "override, field, fix",
    [
        ("search.init=random", "search.init", "kstarts"),
        ("search.weight_inheritance=maybe", "search.weight_inheritance", "true"),
        ("search.level_champions=1", "search.level_champions", "true"),
        ("training.lr_schedule=step", "training.lr_schedule", "cosine"),
    ],
)
def test_search_and_training_choices_name_the_field_and_the_fix(override, field, fix):
    with pytest.raises(ConfigError, match=field) as info:
        load_config(None, [override])
    assert fix in str(info.value) and override.split("=")[1] in str(info.value)


def test_pruned_starts_need_inheritance():
    with pytest.raises(ConfigError, match="search.init.*weight_inheritance: true"):
        load_config(None, ["search.weight_inheritance=false"])
    config = load_config(None, ["search.weight_inheritance=false", "search.init=kstarts"])
    assert not config.search.weight_inheritance
    assert load_config(None).search.weight_inheritance and load_config(None).search.init == "kstarts+prune"


@pytest.mark.parametrize(
    "override, message",
    [
        # checked by evaluators/settings.py
        ("training.lr=0", "training.lr must be a positive number; got 0; e.g. 0.005"),
        ("certification.pgd=maybe", "certification.pgd must be true or false; got 'maybe'; e.g. true"),
        # checked by evaluators/spec.py
        ("data.subset=0", "data.subset must be a positive integer or null; got 0; e.g. 1000, or null for all"),
        ("model.kind=rnn", "model.kind is not a model template; got 'rnn'; use one of mlp, cnn"),
        ("data.path=x", "data.path must be unset for digits (it is embedded); got 'x'; remove data.path, "
                        "or set data.name to npz or an MNIST-format name to read files"),
        # checked by search/config.py
        ("search.seed=-1", "search.seed must be a non-negative integer; got -1; e.g. 0"),
        ("cluster.cpus_per_actor=0", "cluster.cpus_per_actor must be a positive integer; got 0; e.g. 1"),
    ],
)
def test_every_section_words_a_bad_setting_alike(override, message):
    # One rule for every section: "<field> <rule>; got <value>; <fix>".
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message


def test_a_setting_added_later_leaves_the_digests_of_earlier_runs_unchanged():
    # The default search's digests as certevo computed them before search.mode existed
    # (commit ab68bf7). A run made then must keep them: resume reuses only the journal
    # records stamped with its own digest, and exports carry it.
    from certevo.search.journal import journal_digest

    config = load_config(None, [])
    assert config.search.mode == "generational"
    assert config.digest() == "7424a7cc6099"
    assert journal_digest(config) == "cc93430b8c42"
    assert load_config(None, ["search.mode=asynchronous"]).digest() != config.digest()


def test_how_often_to_checkpoint_changes_no_digest_and_is_checked():
    # It decides when the state is written, not what is computed: a resume may change it.
    config = load_config(None, [])
    assert load_config(None, ["search.checkpoint_every=50"]).digest() == config.digest()
    with pytest.raises(ConfigError) as info:
        load_config(None, ["search.checkpoint_every=0"])
    assert str(info.value).startswith("search.checkpoint_every must be a positive integer or null; got 0;")


def test_a_launch_on_a_cluster_runs_asynchronously_unless_the_config_chooses(tmp_path):
    from certevo.search.config import load_launch_config

    config, note = load_launch_config(None, [], None)  # a laptop: Ray started by certevo
    assert config.search.mode == "generational" and note is None
    config, note = load_launch_config(None, [], "auto")
    assert config.search.mode == "asynchronous" and config.cluster.address == "auto"
    assert "search.mode: generational" in note  # how to get the other one
    config, note = load_launch_config(None, ["search.mode=generational"], "auto")
    assert config.search.mode == "generational" and note is None
    chosen = tmp_path / "chosen.yaml"
    chosen.write_text("search:\n  mode: generational\n  generations: 2\n")
    config, note = load_launch_config(chosen, [], "10.0.0.1:6379")
    assert config.search.mode == "generational" and config.search.generations == 2 and note is None
    on_cluster = tmp_path / "cluster.yaml"
    on_cluster.write_text("cluster:\n  address: auto\nsearch:\n  generations: 2\n")
    config, note = load_launch_config(on_cluster, [], None)
    assert config.search.mode == "asynchronous" and config.search.generations == 2 and note is not None
