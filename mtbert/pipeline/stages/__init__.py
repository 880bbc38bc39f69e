"""The stages: the one API that the CLI, the Prefect flows and dvc.yaml call.

One module per stage, each with `run(cfg, ...)`, the stage as a command runs it (tracked in MLflow
where the stage trains or evaluates). Stages that other edges reuse untracked also export their
body (`train.train_model`, `evaluate.evaluate_model`, `pretrain_mlm.pretrain`).

    prepare        import_data, run -> typed tables in data.prepared_dir (dvc: prepare)
    augment        run -> augmented tables in data.augmented_dir (dvc: augment)
    train          run -> the model in train.out_dir (dvc: train)
    evaluate       run -> dev metrics, predictions, plots (dvc: evaluate)
    pretrain_mlm   run -> an MLM-further-pretrained encoder in mlm.out_dir
    tune           run -> the Optuna study and its best parameters
    register       run, compare, serve_command -> the MLflow model registry
    predict        run -> predictions for a user's file
    ablate         run -> a set of configurations trained and compared

This package's __init__ imports nothing: each stage's import closure is the code it runs, which
is what its dvc.yaml deps list (tests/unit/test_architecture.py checks that).
"""
