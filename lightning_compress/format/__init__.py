"""The ``.lcz`` file format: container, codecs, report and the save/load API (no Lightning)."""
