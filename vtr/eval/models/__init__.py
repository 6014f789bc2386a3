"""vtr's lmms-eval model classes, one module per family so a run imports only the lmms-eval class it uses.

Each class is lmms-eval's own class with ``Reduced`` mixed in front (``base.py``); registration is in
``vtr.eval.lmms``.
"""
