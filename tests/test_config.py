import json
import math

import pytest
import yaml

from selhn.config.resolve import RECIPES, recipe_values, resolve
from selhn.config.schema import Config, load_config, save_config
from selhn.config.upgrade import saved_config
from selhn.data.facts import DataFacts
from selhn.models import create_model


def recipe_config(name):
    config = Config()
    config.update(recipe_values(name), name)
    return config


def test_the_paper_recipe_is_one_argument_away():
    paper = recipe_config("paper")
    assert (paper.train.lr, paper.train.epochs, paper.train.batch_size) == (5e-4, 30, 128)
    assert (paper.train.lr_decay_epoch, paper.train.grad_clip) == (15, 2.0)
    assert (paper.train.warmup_steps, paper.train.patience) == (0, 0)
    assert (paper.loss.margin, paper.loss.epsilon, paper.loss.warmup_epochs) == (0.2, 0.01, 0)
    assert (paper.model.embed_size, paper.model.word_dim) == (1024, 300)
    assert (paper.data.region_drop, paper.data.token_prob) == (0.2, 0.2)
    # the defaults are the paper's recipe, but for the schedule, which they leave to the data
    defaults = Config()
    schedule = {"epochs": 30, "lr_decay_epoch": 15, "warmup_steps": 0, "patience": 0}
    assert all(getattr(defaults.train, key) is None for key in schedule)
    waiting = ("epochs", "warmup_steps", "lr_decay_epoch", "patience")
    assert defaults.unresolved() == [f"train.{key}" for key in waiting]
    for key, value in schedule.items():
        setattr(defaults.train, key, value)
    assert paper == defaults and not paper.unresolved()


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  epochs: 4\nloss:\n  epsilon: .inf\n")
    config = load_config(path, {"train.epochs": "7", "loss.false_negatives": "same_caption"})
    assert config.train.lr == 1e-3 and config.train.epochs == 7
    assert math.isinf(config.loss.epsilon) and config.loss.false_negatives == "same_caption"
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.lrate": 1}, r"unknown key 'train.lrate'; train has"),
        ({"optim.lr": 1}, r"unknown key 'optim.lr'"),
        ({"train.epochs": "many"}, r"train.epochs must be int; got 'many'"),
        ({"train.epochs": "1.5"}, r"train.epochs must be int; got '1.5'"),
        ({"loss.false_negatives": "maybe"}, r"loss.false_negatives must be one of \('none', "),
        ({"loss.hardness": -1}, r"loss.hardness must be >= 0; got -1.0"),
        ({"loss.similar_threshold": 2}, r"loss.similar_threshold must be in \[-1, 1\]; got 2.0"),
        ({"loss.epsilon": -1}, r"loss.epsilon must be >= 0; got -1.0"),
        ({"loss.name": "triplet"}, r"loss.name must be one of .*got 'triplet'"),
        ({"train.batch_size": 1}, r"train.batch_size must be >= 2; got 1"),
        ({"model.text_encoder": "bert"}, r"model.text_encoder must be \('bigru', 'transformer', "),
        ({"model.text_model": "/m"}, r"model.text_model must be None unless .* is transformer or"),
        ({"model.word_vectors": "word2vec"}, r"model.word_vectors must be None or glove"),
        (
            {"model.text_encoder": "transformer", "model.word_vectors": "glove"},
            r"model.word_vectors must be None with model.text_encoder=transformer",
        ),
        (
            {"model.text_encoder": "transformer", "data.vocab": "v.json"},
            r"data.vocab must be None with model.text_encoder=transformer",
        ),
        ({"train.pretrained_lr_scale": 0}, r"train.pretrained_lr_scale must be > 0"),
        ({"model.class_prior": -1}, r"model.class_prior must be a number >= 0"),
        (
            {"model.class_prior": 0.3, "model.backbone_stage": "efficientnet-lite0"},
            r"model.class_prior must be 0 unless model.text_encoder is sentence",
        ),
        (
            {"model.class_prior": 0.3, "model.backbone_stage": None},
            r"model.class_prior must be 0 unless model.backbone or model.backbone_stage is eff",
        ),
    ],
)
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_bad_file_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: [1, 2]\n")
    with pytest.raises(ValueError, match=r"run.yaml: section 'train' must be a mapping"):
        load_config(path)
    path.write_text("training:\n  lr: 1\n")
    with pytest.raises(ValueError, match=r"run.yaml: unknown section 'training'"):
        load_config(path)


def test_the_model_section_is_the_architectures_own_settings(tmp_path):
    from selhn.models.rvsepp import RVSEPPSettings
    from selhn.models.vsepp import VSEPPSettings

    assert isinstance(Config().model, RVSEPPSettings)
    config = load_config(None, {"model.embed_size": 64, "model.architecture": "vsepp"})
    assert isinstance(config.model, VSEPPSettings) and config.model.embed_size == 64
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config
    cases = [
        (
            {"model.architecture": "vsepp", "model.mlp_hidden": 8},
            r"model.mlp_hidden does not apply to model.architecture=vsepp",
        ),
        ({"model.architecture": "vsepp", "model.width": 8}, r"unknown key 'model.width'"),
        ({"model.architecture": "vit"}, r"model.architecture: unknown architecture 'vit'"),
        ({"model.img_dim": 16}, r"model.img_dim is set from the data, not configured"),
        ({"model.vocab_size": 16}, r"model.vocab_size is set from the data"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            load_config(None, overrides)
    path = tmp_path / "rvsepp.yaml"
    path.write_text("model:\n  mlp_hidden: 8\n")
    with pytest.raises(ValueError, match=r"model.mlp_hidden does not apply to .*=vsepp"):
        load_config(path, {"model.architecture": "vsepp"})


def test_packaged_configurations_are_found_by_name(tmp_path, capsys):
    from selhn.cli import main
    from selhn.config.describe import describe
    from selhn.config.resolve import recipes
    from selhn.config.schema import PRESETS, presets

    assert {"demo", "experiment"} <= set(presets()) and recipes() == ["own-data", "paper"]
    assert load_config("demo") == load_config(PRESETS / "demo.yaml")
    assert load_config("demo").model.embed_size == 256
    with pytest.raises(FileNotFoundError, match=r"nope: no such configuration .*demo, "):
        load_config("nope")
    with pytest.raises(FileNotFoundError, match=r"the recipes paper and own-data are given"):
        load_config("paper")
    (tmp_path / "mine.yaml").write_text("train:\n  epochs: 3\n")
    assert load_config(tmp_path / "mine.yaml").train.epochs == 3  # a path still works

    assert main(["config", "show", "demo"]) == 0
    shown = capsys.readouterr().out
    assert yaml.safe_load(shown) == load_config("demo").to_dict()
    keys = [line for line in shown.splitlines() if line.startswith("  ")]
    assert len(keys) == sum(len(v) for v in Config().to_dict().values())
    assert all("  # " in line for line in keys)  # every key has its comment
    assert "  embed_size: 256  # joint embedding dimension" in shown
    assert describe(Config()) != describe(load_config("demo"))
    assert main(["config", "show", "own-data"]) == 0  # a recipe, with its settings for some losses
    shown = capsys.readouterr().out
    assert yaml.safe_load(shown)["train"]["lr"] == 5e-4  # the lines for some losses are comments
    assert "#   loss.name=selhn: train.lr=0.0001, train.patience=0" in shown.splitlines()


def test_version_is_printed_and_recorded(tmp_path, capsys):
    import selhn
    from selhn.checkpoint import save_model
    from selhn.cli import main
    from selhn.data.vocab import Vocabulary

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"selhn {selhn.__version__}\n"
    vocab = Vocabulary.build(["a red cube"])
    save_model(
        tmp_path / "m",
        create_model("rvsepp", vocab_size=len(vocab), img_dim=4, embed_size=8),
        vocab,
    )
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["selhn_version"] == selhn.__version__


def test_a_config_written_by_0_1_0_still_loads():
    """0.1.0 wrote every model key, whatever the architecture, at its default where unused."""
    written = {
        "model": {"architecture": "vsepp", "embed_size": 64, "word_dim": 32, "mlp_hidden": 512,
                  "text_encoder": "bigru", "text_model": None, "word_vectors": None,
                  "backbone": None, "backbone_weights": None, "image_size": 224},
        "train": {"epochs": 2},
    }  # fmt: skip
    config = saved_config(written, "config.yaml")
    assert config.model.architecture == "vsepp" and config.model.embed_size == 64
    changed = {"model": {"architecture": "vsepp", "mlp_hidden": 256}}
    with pytest.raises(ValueError, match=r"model.mlp_hidden does not apply to .*=vsepp"):
        saved_config(changed, "config.yaml")


@pytest.mark.parametrize(("masked", "mode"), [(True, "same_image"), (False, "none")])
def test_a_config_with_mask_same_image_reads_as_false_negatives(masked, mode):
    config = saved_config({"loss": {"name": "infonce", "mask_same_image": masked}}, "config.json")
    assert config.loss.false_negatives == mode and config.loss.name == "infonce"


def test_the_recipe_is_chosen_from_the_data_and_what_the_user_sets_is_kept(tmp_path):
    features, regions = tmp_path / "features", tmp_path / "regions"
    for folder in (features, regions):
        folder.mkdir()
        (folder / "train_caps.txt").write_text("a red cube\n" * 300)
    job = {"backbone": "efficientnet-lite0", "image_size": 224, "weights": None}
    (features / "features.json").write_text(json.dumps(job))  # written by selhn features
    older = DataFacts.read(features)  # features of an older selhn: no trunk activations
    assert (older.features["backbone"], older.trunk, older.pairs) == (
        "efficientnet-lite0",
        False,
        300,
    )
    resolved = resolve(older)
    assert resolved.choices[0].startswith("recipe none (the defaults: the paper's model and loss)")
    assert "holds no trunk activations" in resolved.choices[0]
    assert (resolved.config.model.text_encoder, resolved.config.loss.name) == ("bigru", "selhn")
    assert resolved.config.train.weight_average == 0 and not resolved.config.unresolved()
    (features / "train_trunk.npy").write_bytes(b"")  # now it holds them
    own = resolve(DataFacts.read(features))
    assert own.choices[0].startswith(f"recipe own-data, as {features} holds efficientnet-lite0")
    model = own.config.model
    assert (model.backbone_stage, model.image_head, model.text_encoder) == (
        "efficientnet-lite0", "mean", "sentence")  # fmt: skip
    assert model.class_prior == 0.5 and model.image_size == 224
    assert (own.config.loss.name, own.config.train.weight_average) == ("infonce", 0.95)
    plain = resolve(DataFacts.read(regions))
    assert "holds no features of selhn features" in plain.choices[0]
    # the schedule's rule on 300 pairs at batch 128: 3 steps an epoch
    assert plain.choices[1:] == [
        "train.epochs=300, as 1000 steps at 3 per epoch need 334 epochs, kept within [30, 300]",
        "train.warmup_steps=45, as 5% of the steps",
        "train.lr_decay_epoch=150 (step 450), as half of the steps",
        "train.patience=15, as 5% of the epochs, at least 5 (epochs without a better dev rSum "
        "before training stops)",
    ]
    given = {"loss.name": "hardest", "train.epochs": 7, "model.class_prior": 0}
    kept = resolve(DataFacts.read(features), overrides=given).config
    assert (kept.loss.name, kept.train.epochs, kept.model.class_prior) == ("hardest", 7, 0)
    small = resolve(DataFacts.read(features), overrides={"model.embed_size": 384})
    assert small.config.model.class_prior == 0 and small.choices[-5] == (
        "model.class_prior=0, as model.embed_size=384 leaves the class prior no room (it takes 384)"
    )
    with pytest.raises(ValueError, match=r"model.class_prior=0.5 needs model.embed_size above"):
        resolve(DataFacts.read(features), overrides={"model.embed_size": 384,
                                                     "model.class_prior": 0.5})  # fmt: skip
    with pytest.raises(ValueError, match=r"model.image_size=96, but the trunk activations of"):
        resolve(DataFacts.read(features), overrides={"model.image_size": 96})
    with pytest.raises(ValueError, match=r"which .*regions does not hold; make them with selhn"):
        resolve(DataFacts.read(regions), recipe="own-data")
    probe = resolve(DataFacts.read(features), overrides={"model.architecture": "probe"})
    assert probe.config.model.architecture == "probe" and probe.config.loss.name == "infonce"
    assert "own-data recipe's model settings are rvsepp's" in probe.choices[1]
    paper = resolve(DataFacts.read(features), recipe="paper")
    assert paper.choices == [] and paper.config == recipe_config("paper")


def own_features(folder):
    """The facts of a data directory that the own-data recipe is chosen for (its files empty)."""
    folder.mkdir()
    (folder / "train_caps.txt").write_text("a red cube\n" * 300)
    job = {"backbone": "efficientnet-lite0", "image_size": 224, "weights": None}
    (folder / "features.json").write_text(json.dumps(job))
    (folder / "train_trunk.npy").write_bytes(b"")
    return DataFacts.read(folder)


def test_a_recipe_sets_the_learning_rate_of_the_triplet_losses_unless_the_user_does(tmp_path):
    facts = own_features(tmp_path / "features")
    special = yaml.safe_load((RECIPES / "own-data.yaml").read_text())["for_loss"]
    assert set(special) == {"selhn", "hardest"}
    infonce = resolve(facts).config
    assert (infonce.loss.name, infonce.train.lr) == ("infonce", 5e-4)
    for loss in ("selhn", "hardest"):
        chosen = resolve(facts, overrides={"loss.name": loss})
        assert chosen.config.train.lr == special[loss]["train"]["lr"] == 1e-4
        assert chosen.config.train.patience == 0  # not the schedule's rule
        assert not any(choice.startswith("train.patience=") and "rule" in choice
                       for choice in chosen.choices)  # fmt: skip
        assert f"train.lr=0.0001, the own-data recipe's setting for loss.name={loss}" in (
            chosen.choices
        )
    mine = resolve(facts, overrides={"loss.name": "selhn", "train.lr": 3e-4})
    assert mine.config.train.lr == 3e-4 and mine.config.train.patience == 0  # the rest applies
    assert not any(choice.startswith("train.lr=") for choice in mine.choices)
    from_file = tmp_path / "mine.yaml"
    from_file.write_text("loss:\n  name: hardest\n")  # the loss named by a file counts too
    assert resolve(facts, config_file=from_file).config.train.lr == 1e-4
    paper = resolve(facts, recipe="paper", overrides={"loss.name": "hardest"})
    assert paper.config.train.lr == 5e-4
    assert recipe_values("own-data", "selhn")["train"] == {
        "weight_average": 0.95, "lr": 1e-4, "patience": 0}  # fmt: skip
    assert "for_loss" not in recipe_values("own-data")
    # the recipe's model is rvsepp's, and so are its settings for a loss
    probe = resolve(facts, overrides={"model.architecture": "probe", "loss.name": "selhn"})
    assert probe.config.train.lr == 5e-4 and probe.config.train.patience != 0


def test_a_recipe_naming_an_unknown_loss_is_refused(tmp_path, monkeypatch):
    from selhn.config import resolve as resolving

    monkeypatch.setattr(resolving, "RECIPES", tmp_path)
    (tmp_path / "mine.yaml").write_text("for_loss:\n  selhm:\n    train: {lr: 1.0e-4}\n")
    with pytest.raises(ValueError, match=r"mine.yaml: for_loss names unknown losses \['selhm'\]"):
        recipe_values("mine")
    (tmp_path / "mine.yaml").write_text("for_loss:\n")  # empty: no settings for any loss
    assert recipe_values("mine", "selhn") == {} and resolving.recipe_loss_settings("mine") == {}


def test_an_experiment_records_what_the_recipe_sets_for_each_loss(tmp_path):
    from selhn.config.schema import loss_setup
    from selhn.training.experiment import loss_changes

    facts = own_features(tmp_path / "features")
    base = resolve(facts).config
    expected = {"loss.name": "selhn", "train.lr": 1e-4, "train.patience": 0}
    for loss, more in (("selhn", expected), ("infonce", {"loss.name": "infonce"})):
        config = resolve(facts, overrides={**loss_setup(loss), "train.seed": 2}).config
        assert loss_changes(loss, config, base) == more
    assert loss_changes("selhn", Config(), Config()) == {"loss.name": "selhn"}
