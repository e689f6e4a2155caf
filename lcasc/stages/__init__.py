"""The stages of ``lcasc run``, one module each, in the order ``lcasc run`` runs them (:data:`lcasc.names.STAGES`):

    features    log-mel features of every clip (lcasc.features), cached; the data summary
    train       the unpruned network (or a kd student: lcasc.recipes)
    evaluate    a network on the test and validation splits, with its complexity
    prune       similarity-based filter pruning of the unpruned network and fine-tuning (paper Table 2)
    quantize    full-integer INT8 files, run in TensorFlow Lite Micro
    ensemble    paper Table 3 and the best ensemble within the DCASE budget
    similarity  feature-map MSE between the pruned networks (paper Figure 5)
    fuse        the ensemble that computes shared feature maps once, and its INT8 file
    baselines   the paper's comparison methods
    report      report.md from results.json

Each module's ``run(run, ...)`` reads and writes plain files of a :class:`lcasc.run.Run` directory, skips
what the directory already holds, and returns what it added.
"""
