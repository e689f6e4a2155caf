"""Similarity-based filter pruning of the unpruned network and fine-tuning of each pruned network (paper
Table 2), with the unpruned network fine-tuned alike as the control."""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace

import numpy as np
from tqdm.auto import tqdm

from lcasc import metrics, plots
from lcasc import prune as pruning
from lcasc.features import opened
from lcasc.io import read_json, write_json
from lcasc.models import graph
from lcasc.models.cnn import CNNClassifier, CNNSpec, LowComplexityCNN
from lcasc.names import LAYER_SETS, UNPRUNED, UNPRUNED_FT, pruned_name
from lcasc.recipes import teacher_logits
from lcasc.run import Run, RunError
from lcasc.stages import evaluate
from lcasc.train import TrainConfig
from lcasc.workers import cpu_count, exit_with_parent

log = logging.getLogger("lcasc")


def run(run: Run, layers: list[str] | None = None, criterion: str = "similarity",
                max_epochs: int | None = None, patience: int | None = None) -> list[dict]:
    """Prune the unpruned network (indices found once per layer), fine-tune and evaluate each combination.

    Fine-tuning uses the run's training recipe (all layers trainable, from the kept weights); ``max_epochs``
    and ``patience`` override its budget."""
    layers = list(layers or LAYER_SETS)
    unknown = [c for c in layers if c not in LAYER_SETS]
    if unknown:
        raise RunError(f"unknown layer combination(s) {', '.join(unknown)}; choose from {', '.join(LAYER_SETS)}")
    base = CNNClassifier.load(run.model_dir(UNPRUNED))
    index_file = run.dir / "models" / f"pruning_{criterion}.json"
    removed_all = read_json(index_file)
    if removed_all is None:
        removed_all = pruning.find_redundant(base.net, criterion=criterion, seed=run.seed)
        write_json(index_file, removed_all)
    log.info("prune (%s): removing %s filters of C1/C2/C3", criterion,
             "/".join(str(len(removed_all[k])) for k in graph.CONVS))
    va, te = run.split("validate"), run.split("test")
    finetune = replace(run.config.train, threads=1, progress=False,
                       **{k: v for k, v in (("max_epochs", max_epochs), ("patience", patience)) if v is not None})
    budget = {"max_epochs": finetune.max_epochs, "patience": finetune.patience}
    nets, before = {}, {}
    for combo in layers:
        nets[pruned_name(combo, criterion)] = pruning.prune_network(
            base.net, {layer: removed_all[layer] for layer in LAYER_SETS[combo]})
    nets[UNPRUNED_FT] = pruning.prune_network(base.net, {})  # a copy: nothing removed
    for name, net in nets.items():
        probs = evaluate.test_and_validation_probs(run, CNNClassifier(run.classes, net=net))
        before[name] = {split: {k: round(v, 6) for k, v in metrics.scores(p, fs.y, len(run.classes)).items()}
                        for split, fs, p in (("test", te, probs[0]), ("validate", va, probs[1]))}
    for name in nets:  # the budget a model in models/<name>/ is (being) fine-tuned with, fixed once
        saved = read_json(run.model_dir(name) / "finetune.json")
        if saved is not None and saved != budget and (run.model_dir(name) / "model.pt").is_file():
            raise RunError(f"{name} was fine-tuned with {saved}, not {budget}; use another run directory, or "
                           f"delete {run.model_dir(name)} to fine-tune it again")
        write_json(run.model_dir(name) / "finetune.json", budget)
    todo = [name for name in nets if not (run.model_dir(name) / "model.pt").is_file()]
    if todo:
        finetune_all(run, {name: nets[name] for name in todo}, finetune)
    entries = []
    for name in nets:
        if name == UNPRUNED_FT:
            extra = {"control": "unpruned network fine-tuned with the pruned networks' recipe and budget"}
        else:
            combo = name.removeprefix("pruned_").removeprefix(f"{criterion}_")
            extra = {"criterion": criterion, "pruned_layers": combo,
                     "removed": {layer: removed_all[layer] for layer in LAYER_SETS[combo]}}
        entry = evaluate.run(run, name, {
            **extra, "before_finetune": before[name]["test"], "before_finetune_validation": before[name]["validate"],
            "finetune": budget})
        if name != UNPRUNED_FT:
            entries.append(entry)
    plots.pruning_effect(entries, run.figure(f"pruning_{criterion}.png"), criterion)
    return entries


def _finetune_job(classes: list[str], spec: dict, state_dict: dict, config: TrainConfig, workdir: str,
                  arrays: tuple[np.ndarray, ...]) -> str:
    """Fine-tune one network in a worker process and save it to ``workdir``; returns ``workdir``."""
    net = LowComplexityCNN.from_spec(CNNSpec.from_dict(spec))
    net.load_state_dict(state_dict)
    clf = CNNClassifier(classes, net=net, train_config=config, workdir=workdir)
    clf.fit(*opened(arrays))  # the worker maps the run's feature file itself: no pickled copy per worker
    clf.save(workdir)
    return workdir


def finetune_all(run: Run, nets: dict, config: TrainConfig) -> None:
    """Fine-tune ``nets`` ({name: pruned LowComplexityCNN}) on the run's training split, each in its own
    process on one thread, as many at once as there are cores; each is saved to ``models/<name>/``.

    Small networks train faster on one thread each, side by side, than one after another on every core; and
    one thread per network makes the result independent of how many run at once (a resumed run fine-tunes
    the rest exactly as an uninterrupted one would have)."""
    tr, va = run.split("train"), run.split("validate")
    # teacher logits: None for the paper recipe; impulse-response copies: None unless asked for
    arrays = (tr.shareable_X(), tr.y, va.shareable_X(), va.y, teacher_logits(run), run.impulse_copies())
    workers = min(len(nets), cpu_count())
    jobs = {name: (run.classes, net.spec.to_dict(), net.state_dict(), config, str(run.model_dir(name)), arrays)
            for name, net in nets.items()}
    with tqdm(total=len(jobs), desc="fine-tune", unit="net", disable=not run.progress) as bar:
        if workers == 1:
            for job in jobs.values():
                _finetune_job(*job)
                bar.update()
            return
        # spawn, not fork: a forked child of a process that already ran torch's OpenMP pool can hang.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=exit_with_parent) as pool:
            futures = {pool.submit(_finetune_job, *job): name for name, job in jobs.items()}
            for fut in as_completed(futures):
                fut.result()  # a failed job raises here; finished ones are saved already
                log.info("fine-tuned %s", futures[fut])
                bar.update()
