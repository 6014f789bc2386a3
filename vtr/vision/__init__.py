"""The vision-encoder side: attention scores captured without eager attention."""
