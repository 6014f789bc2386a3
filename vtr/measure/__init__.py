"""Measuring what a reduction saves: analytical FLOPs, timers for vtr's own code, real-size model presets."""
