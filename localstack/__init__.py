"""The AWS flavour run locally on LocalStack (host mode, no Docker): ``server``, ``setup``,
``record_events``. Run from the repository root as ``python -m localstack.<module>``.

Not installed with the project: its name would collide with LocalStack's own package, which
runs in a separate venv (``.venv-localstack/``) started outside the repository.
"""
