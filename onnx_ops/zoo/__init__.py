"""Model zoo: recursive models built in the three forms Cortex reads (TreeRec, hand-built Loop, numpy reference)."""

from . import treelstm

__all__ = ["treelstm"]
