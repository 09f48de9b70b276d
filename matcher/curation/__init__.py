"""The ``whalematch`` curation tool: verify pairs, search a catalogue, audit its labels, calibrate P(same whale)."""
