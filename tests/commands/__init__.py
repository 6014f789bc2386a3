"""Tests of vtr.commands (a package, so its module names may repeat those of tests/measure)."""
