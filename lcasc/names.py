"""The names a user can pick, written once: the modules that implement them and the command line (which
must not import PyTorch to print ``--help``) both read them here."""

from __future__ import annotations

LAYOUTS = ("tau22", "folder", "csv")  # dataset layouts (lcasc.data)
TAU22_PROTOCOLS = ("holdout", "evaluate")  # where a TAU22 run validates (lcasc.data.datasets)
# TAU Urban Acoustic Scenes 2022 Mobile's scenes in the order its networks (the paper's among them) output them
TAU22_CLASSES = ("airport", "bus", "metro", "metro_station", "park", "public_square", "shopping_mall",
                 "street_pedestrian", "street_traffic", "tram")
RECIPES = ("paper", "kd")  # training recipes (lcasc.recipes)
# The stages of ``lcasc run`` in order (lcasc.stages); the first three always run.
STAGES = ("features", "train", "evaluate", "prune", "quantize", "ensemble", "similarity", "fuse", "baselines")
SKIPPABLE_STAGES = STAGES[3:]

# Names of results.json entries.
UNPRUNED = "unpruned"
# The control for the pruning tables: the unpruned network fine-tuned with the pruned networks' recipe and
# budget, so that the report separates the effect of pruning from the effect of training longer.
UNPRUNED_FT = "unpruned_ft"
LAYERS = ("C1", "C2", "C3")  # the convolutional layers of the network family (lcasc.models.cnn)
# Paper Table 2: which layers each pruned network prunes.
LAYER_SETS = {"C1": ("C1",), "C2": ("C2",), "C3": ("C3",), "C12": ("C1", "C2"), "C23": ("C2", "C3"),
              "C123": ("C1", "C2", "C3")}
CRITERIA = ("similarity", "l1", "random")  # how filters to prune are chosen (lcasc.prune)
FUSED = "ensemble_fused"  # the ensemble whose shared feature maps are computed once (lcasc.stages.fuse)
BASELINES = ("gmm", "rf", "mlp", "dlsi", "vggish")  # the paper's comparison methods (lcasc.models.baselines)
CHEAP_BASELINES = ("gmm", "rf", "mlp", "dlsi")  # the ones ``lcasc run`` fits

BACKENDS = ("auto", "torch", "onnx", "tflite")  # runtimes of ``lcasc predict`` (lcasc.registry)
FORMATS = ("table", "json", "csv", "dcase")  # output formats of ``lcasc predict``


def pruned_name(combo: str, criterion: str = "similarity") -> str:
    """The results.json name of the network pruned in the layers ``combo`` (a key of :data:`LAYER_SETS`)."""
    return f"pruned_{combo}" if criterion == "similarity" else f"pruned_{criterion}_{combo}"
