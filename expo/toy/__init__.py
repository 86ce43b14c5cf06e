"""The embedded default: the needle task (`task.py`) and the tiny model warmed up on it (`model.py`).

`expo run` with no arguments uses both, with the settings in `defaults.yaml` (measured in
docs/embedded-default.md).
"""
