"""The ``README.md`` of a trained model's directory: what the model is, the recipe and data it
was trained on, how well it scored and the command that made it."""

from __future__ import annotations

from typing import Any

from selhn import __version__
from selhn.config.resolve import dotted, recipe_values, recipes
from selhn.models import DualEncoder

TEST_METRICS = (
    "not measured when saved: `selhn eval --checkpoint THIS_DIRECTORY --data DATA --split test` "
    "measures them"
)
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def closest_recipe(config: dict[str, Any]) -> str:
    """The packaged recipe whose settings the configuration keeps, with those it changed (at
    most three)."""
    settings = dotted(config)
    changed = {
        name: {k: settings.get(k)
               for k, v in dotted(recipe_values(name, settings.get("loss.name"))).items()
               if settings.get(k) != v}
        for name in recipes()
    }  # fmt: skip
    name = min(changed, key=lambda recipe: len(changed[recipe]))
    if not changed[name]:
        return name
    if len(changed[name]) > 3:
        return "none of the packaged recipes (config.json holds every setting)"
    return f"{name}, with " + ", ".join(f"{k}={v}" for k, v in changed[name].items())


def model_card(model: DualEncoder, meta: dict[str, Any]) -> str:
    """The card of a checkpoint of ``model`` whose ``config.json`` holds ``meta`` (the
    trainer's config, epoch, dev_metrics, train_data, image_features, command, and the
    ``packaged`` parts that ``save_model`` records)."""
    config, loss = meta["config"], meta["config"]["loss"]
    settings = ", ".join(f"{k} {v}" for k, v in vars(model.settings).items() if v is not None)
    data = meta.get("train_data") or {}
    trained = f"{meta['epoch']} trained" + (", finished" if meta.get("finished") else "")
    rows = [
        ("architecture", f"{model.architecture}: {settings}"),
        ("recipe", closest_recipe(config)),
        ("loss", f"{loss['name']} (false negatives: {loss['false_negatives']})"),
        ("epochs", trained),
        (
            "training data",
            f"split {data.get('split')}: {data.get('images')} images, "
            f"{data.get('captions')} captions, SHA-256 {data.get('sha256')}",
        ),
    ]
    features = meta.get("image_features")
    if features:
        rows.append(("image features", ", ".join(f"{k} {v}" for k, v in features.items())))
    dev = meta.get("dev_metrics") or {}
    rows.append(("dev metrics", ", ".join(f"{k} {dev[k]}" for k in METRICS if k in dev)))
    rows.append(("test metrics", TEST_METRICS))
    for part in meta.get("packaged", []):
        frozen = f"frozen, not copied: {part['file']} of the PyPI package {part['package']}"
        rows.append((part["module"], f"{frozen} {part['version']} (SHA-256 in config.json)"))
    if meta.get("command"):
        rows.append(("made by", f"`{meta['command']}`"))
    rows.append(("selhn", __version__))
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    return (
        f"# {model.architecture} image-text model, trained with selhn\n\n"
        "An image-text matching model: images and captions embedded into one space, where a "
        "caption's nearest images are those it describes.\n\n"
        f"| | |\n|---|---|\n{table}\n\n"
        "## Use\n\n"
        "```python\n"
        "from selhn import Encoder\n\n"
        'encoder = Encoder.load("THIS_DIRECTORY")\n'
        'texts = encoder.encode_texts(["a dog on a beach"])\n'
        "```\n\n"
        "`selhn index --checkpoint THIS_DIRECTORY --images PHOTOS --out INDEX` indexes a folder "
        "of images with it; `selhn serve --index INDEX` searches them.\n"
    )
