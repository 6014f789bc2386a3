"""Pictures of what a reduction kept: dropped patches dimmed, merged groups in one colour, per method and budget.

``vtr.show(model, processor, image, methods=[...], budgets=[...])`` runs and draws; ``show_call`` draws a
call already made. Geometry comes from the adapters (``Adapter.pixel_maps``, ``vtr.pixels``), painting
from ``vtr.stats`` (``vtr.show.paint``), the figure from matplotlib (``vtr.show.figure``).
"""

from vtr.show.run import show, show_call

__all__ = ["show", "show_call"]
