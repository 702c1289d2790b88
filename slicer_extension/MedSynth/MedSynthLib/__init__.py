"""Pure-Python support of the MedSynth Slicer module: no ``slicer``, ``qt`` or ``ctk`` import anywhere in this package
(``mrml_io`` imports ``slicer`` lazily, inside its functions), so it can be used and tested outside 3D Slicer.

- ``names``: the contrast name rules of ``medsynth_app.contrasts`` (the same file, never a copy of its rules).
- ``client``: the REST client of the MedSynth MONAI Label server.
- ``logic``: request/response logic: which contrasts to send, selector pre-filling, result name and attributes,
  window/level, and a background-thread runner polled from the GUI thread.
- ``mrml_io``: MRML volume node <-> file, geometry kept.
- ``local``: synthesis without a server when ``medsynth_app`` is importable.
"""
