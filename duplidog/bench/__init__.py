"""The speed benches behind ``duplidog bench pool|train|infer|shot``: drivers that time the stages.

``pool`` (where the samplers put tiles, what a build costs), ``train`` (the data path's overhead and
each preset's steps per second, through the loop's own setup and step), ``infer`` (frames per second
against reading and writing alone, whole frames against tiles), ``shot`` (a whole shot through the
real workflow, stage by stage). Each prints ratios against a reference measured in the same run. The
quality bench (``duplidog.quality``) is separate: it scores pictures, not speed.
"""
