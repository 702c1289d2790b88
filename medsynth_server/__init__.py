"""MedSynth deployment: the MONAI Label app and the 3D Slicer module shipped as package data, the local-server
launcher, and the ``medsynth demo`` and ``medsynth serve`` commands (entry points of ``medsynth.commands``).

It sits above the library: ``medsynth_app`` never imports this package; this package tells the library where the
shipped weights are (entry point of ``medsynth.weight_folders``).
"""
