import json
import math

import pytest
import yaml

from selhn.config import Config, load_config, save_config


def test_the_paper_recipe_is_one_argument_away():
    paper = load_config("paper")
    assert (paper.train.lr, paper.train.epochs, paper.train.batch_size) == (5e-4, 30, 128)
    assert (paper.train.lr_decay_epoch, paper.train.grad_clip) == (15, 2.0)
    assert (paper.train.warmup_steps, paper.train.patience) == (0, 0)
    assert (paper.loss.margin, paper.loss.epsilon, paper.loss.warmup_epochs) == (0.2, 0.01, 0)
    assert (paper.model.embed_size, paper.model.word_dim) == (1024, 300)
    assert (paper.data.region_drop, paper.data.token_prob) == (0.2, 0.2)
    # the defaults leave the schedule, the image side, the text encoder and the loss to the data,
    # and are the paper's recipe otherwise
    defaults = Config()
    schedule = {"epochs": 30, "lr_decay_epoch": 15, "warmup_steps": 0, "patience": 0}
    schedule |= {"weight_average": 0}
    assert all(getattr(defaults.train, key) is None for key in schedule)
    for key, value in schedule.items():
        setattr(defaults.train, key, value)
    assert defaults.model.text_encoder == "auto" and paper.model.text_encoder == "bigru"
    assert defaults.loss.name == "auto" and paper.loss.name == "selhn"
    assert (defaults.model.backbone_stage, defaults.model.image_head) == ("auto", "auto")
    assert (paper.model.backbone_stage, paper.model.image_head) == (None, "residual")
    assert defaults.model.class_prior is None and paper.model.class_prior == 0
    defaults.model.class_prior = 0
    defaults.model.text_encoder, defaults.loss.name = "bigru", "selhn"
    defaults.model.backbone_stage, defaults.model.image_head = None, "residual"
    assert paper == defaults


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  epochs: 4\nloss:\n  epsilon: .inf\n")
    config = load_config(path, {"train.epochs": "7", "loss.mask_same_image": "true"})
    assert config.train.lr == 1e-3 and config.train.epochs == 7
    assert math.isinf(config.loss.epsilon) and config.loss.mask_same_image is True
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.lrate": 1}, r"unknown key 'train.lrate'; train has"),
        ({"optim.lr": 1}, r"unknown key 'optim.lr'"),
        ({"train.epochs": "many"}, r"train.epochs must be int; got 'many'"),
        ({"train.epochs": "1.5"}, r"train.epochs must be int; got '1.5'"),
        ({"loss.mask_same_image": "maybe"}, r"loss.mask_same_image must be bool"),
        ({"loss.epsilon": -1}, r"loss.epsilon must be >= 0; got -1.0"),
        ({"loss.name": "triplet"}, r"loss.name must be one of .*got 'triplet'"),
        ({"train.batch_size": 1}, r"train.batch_size must be >= 2; got 1"),
        ({"model.text_encoder": "bert"}, r"model.text_encoder must be \('auto', 'bigru', "),
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
        ({"model.class_prior": -1}, r"model.class_prior must be None or a number >= 0"),
        (
            {"model.class_prior": 0.3, "model.text_encoder": "bigru"},
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
    from selhn.config import PACKAGED, describe, packaged_configs

    assert {"demo", "paper"} <= set(packaged_configs())
    assert load_config("demo") == load_config(PACKAGED / "demo.yaml")
    assert load_config("demo").model.embed_size == 256
    with pytest.raises(FileNotFoundError, match=r"nope: no such configuration .*demo, "):
        load_config("nope")
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


def test_version_is_printed_and_recorded(tmp_path, capsys):
    import selhn
    from selhn.checkpoint import save_model
    from selhn.cli import main
    from selhn.data.vocab import Vocabulary
    from selhn.models import RVSEPP

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"selhn {selhn.__version__}\n"
    vocab = Vocabulary.build(["a red cube"])
    save_model(tmp_path / "m", RVSEPP(vocab_size=len(vocab), img_dim=4, embed_size=8), vocab)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["selhn_version"] == selhn.__version__


def test_a_config_written_by_0_1_0_still_loads(tmp_path):
    """0.1.0 wrote every model key, whatever the architecture, at its default where unused."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "model:\n  architecture: vsepp\n  embed_size: 64\n  word_dim: 32\n  mlp_hidden: 512\n"
        "  text_encoder: bigru\n  text_model: null\n  word_vectors: null\n  backbone: null\n"
        "  backbone_weights: null\n  image_size: 224\ntrain:\n  epochs: 2\n"
    )
    config = load_config(path)
    assert config.model.architecture == "vsepp" and config.model.embed_size == 64
    path.write_text("model:\n  architecture: vsepp\n  mlp_hidden: 256\n")
    with pytest.raises(ValueError, match=r"model.mlp_hidden does not apply to .*=vsepp"):
        load_config(path)


def test_the_text_encoder_the_prior_the_loss_and_the_weight_average_are_chosen_from_the_data(
    tmp_path, monkeypatch
):
    import selhn.defaults
    from selhn.defaults import choose_for_data

    features, regions = tmp_path / "features", tmp_path / "regions"
    features.mkdir()
    regions.mkdir()
    job = {"backbone": "efficientnet-lite0", "image_size": 224, "weights": None}
    (features / "features.json").write_text(json.dumps(job))  # written by selhn features

    def chosen(data, overrides=None):
        config = load_config(None, overrides)
        lines = choose_for_data(config, data)
        assert choose_for_data(config, data) == []  # nothing left to choose
        return getattr(config.model, "text_encoder", None), config.loss.name, lines

    encoder, loss, lines = chosen(features)
    stage_line, head_line, text_line, prior_line, loss_line, average_line = lines
    assert stage_line.startswith("model.backbone_stage=auto: None, as ")
    assert "has no trunk activations" in stage_line  # features of an older selhn
    assert head_line.startswith("model.image_head=auto: residual, as the paper's")
    assert encoder == "transformer" and "holds features of selhn features" in text_line
    assert prior_line.startswith("model.class_prior=None: 0, as it needs the efficientnet-lite0")
    assert loss == "infonce" and loss_line.startswith("loss.name=auto: infonce, as ")
    assert average_line.startswith("train.weight_average=None: 0.95, as ")
    encoder, loss, [*_, loss_line, average_line] = chosen(regions)
    assert (encoder, loss) == ("bigru", "selhn") and "the paper's loss" in loss_line
    assert average_line.startswith("train.weight_average=None: 0, as ")
    paper = load_config("paper")
    assert choose_for_data(paper, features) == [] and paper.train.weight_average == 0
    assert chosen(features, {"model.word_vectors": "glove"})[:2] == ("bigru", "infonce")
    given = {"model.text_encoder": "bigru", "loss.name": "hardest"}
    given |= {"model.backbone_stage": None, "model.image_head": "residual"}
    given |= {"train.weight_average": 0.5, "model.class_prior": 0}
    assert chosen(features, given) == ("bigru", "hardest", [])  # given: kept
    vsepp = chosen(features, {"model.architecture": "vsepp"})  # it has no text_encoder
    assert vsepp[1] == "infonce" and [line.split(",")[0] for line in vsepp[2]] == [
        "loss.name=auto: infonce",
        "train.weight_average=None: 0.95",
    ]
    monkeypatch.setattr(selhn.defaults, "installed", lambda extra: False)
    encoder, _, [_, _, line, _, _, _] = chosen(features)
    assert encoder == "bigru" and "pip install 'selhn[text]'" in line
