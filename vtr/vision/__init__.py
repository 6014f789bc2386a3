"""The vision-encoder side: attention scores captured without eager attention, token merging by hooks.

Machinery above the method protocol: it imports the types methods declare and return
(``vtr.methods.base``, ``vtr.methods.vision``); methods import nothing from here.
"""
