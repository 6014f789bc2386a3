"""FLOPs arithmetic shared by the analytical FLOPs model's parts (``vtr.measure.flops``).

``counting``: the counting rules (a matmul, an attention score product, a transformer block) and the
geometry of one visual input; ``decoder``: the LLM's decoder layers as data read from the text config.
Below the methods and adapters, which use them to cost their own work and their own towers.
"""
