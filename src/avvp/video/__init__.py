"""Feature extraction from raw video in the LLP conventions (the optional ``avvp[video]`` extra).

Modules: ``decode`` (PyAV: 8 fps RGB frames + 16 kHz mono audio), ``vggish`` (log-mel front end and the
VGGish network in PyTorch), ``weights`` (local weight files), ``backbones`` (the three feature networks),
``extract`` (a folder of videos -> features in the official layout) and ``parse`` (one video -> its parse,
in one call). Nothing here is imported by ``import avvp``; these modules import PyAV and torchvision
inside their functions.
"""

FRAMES_PER_SECOND = 8  # LLP: 80 frames per 10-s video
SAMPLE_RATE = 16000  # VGGish input rate (Hz)
FEATURE_DIRS = {"audio": "vggish", "res152": "res152", "r2plus1d": "r2plus1d_18"}  # official folder names
