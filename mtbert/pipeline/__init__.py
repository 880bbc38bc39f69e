"""The pipeline layer: the edges that run the pure core inside a project folder.

`stages/` holds one module per stage (the API that the CLI, the Prefect flows and dvc.yaml call);
`project` says where a project's files are; `tracking` is the only MLflow adapter; `tuning`
(Optuna), `registry` and `pyfunc` (MLflow models), `serving` (prediction on files and requests),
`ablation` and `progress` (tqdm bars) are the other edges. See docs/architecture.md.
"""
