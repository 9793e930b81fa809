"""The search and everything after it.

- ``hpo``: the Ray Tune + Optuna + ASHA machinery (the only package that imports Ray).
- ``budget``: time planning, pure arithmetic over a ledger.
- ``stages``: settings, the pipeline that runs the stages, the retraining's outputs, the manifest.
- ``report``: the experiment's report, read from its manifest.
- ``serve``: export and prediction (no Ray, no search stages).
"""
