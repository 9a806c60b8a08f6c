"""lmms-eval integration: the ``topa`` model (``model.Topa``) and offline EgoSchema tasks (``tasks/``).

Nothing here is imported by the core; lmms-eval finds the model through the entry point in
``manifest.py``.
"""
