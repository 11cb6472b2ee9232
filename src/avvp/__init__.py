"""avvp: weakly-supervised audio-visual video parsing (MGN, HAN) on the LLP dataset.

Data flows one way through the package:
``data`` (annotations, features, synthetic data) -> ``models`` -> ``train`` / ``inference``
-> ``metrics`` -> ``reports``; ``cli`` is a thin layer over these.
Importing ``avvp`` stays light: torch and the video stack are imported where they are used.
"""

__version__ = "0.1.0"
