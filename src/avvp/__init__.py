"""avvp: weakly-supervised audio-visual video parsing (MGN, HAN and your own models) on LLP and data in its layout.

Data flows one way through the package:
``data`` (annotations, features, synthetic data) -> ``models`` -> ``training`` / ``inference`` -> ``metrics`` ->
``reports``; ``cli`` is a thin layer over these. The Python API (docs/api.md):

    import avvp
    avvp.list_models()                          # ['mgn', 'han', ...plugins]
    model = avvp.create_model("mgn", dim=64)    # or avvp.load_model("best.safetensors" or "MGN_Net.pt")
    predictions = avvp.predict(model, "features/", videos=names)
    scores = avvp.evaluate(predictions, "annotations/", "test")
    result = avvp.train(avvp.TrainConfig(model="han"), features=..., annotations=..., out_dir="runs/han")

    @avvp.register_model("mymodel", config=MyConfig)   # a model of your own, trained and scored like the others
    class MyModel(torch.nn.Module): ...

Importing ``avvp`` stays light: torch and the video stack are imported where they are used.
"""

__version__ = "0.1.0"  # (first: modules imported below read it)

from avvp.api import create_model, evaluate, list_models, load_model, predict, train
from avvp.models import ParseOutput
from avvp.models.registry import LossTerm, register_model
from avvp.recipe import TrainConfig

__all__ = [
    "LossTerm",
    "ParseOutput",
    "TrainConfig",
    "__version__",
    "create_model",
    "evaluate",
    "list_models",
    "load_model",
    "predict",
    "register_model",
    "train",
]
