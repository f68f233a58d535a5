"""CTDiffusionLib: the Qt-free engine (data, models, diffusion, training, generation, evaluation, CLI) and the
MRML scene code of the CTDiffusion 3D Slicer extension.

Importing this package is cheap on purpose: nothing here imports torch, MONAI or slicer, so the Slicer module
can import the scene code at start-up without pulling in the deep-learning stack.
"""

__version__ = "0.1.0"
