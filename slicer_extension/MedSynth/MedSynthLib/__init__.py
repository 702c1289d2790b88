"""Pure-Python support of the MedSynth Slicer module: no ``slicer``, ``qt`` or ``ctk`` import anywhere in this package
(``mrml_io`` and ``hierarchy`` import ``slicer`` lazily, inside their functions), so it can be used and tested outside
3D Slicer. Everything the module needs is in this folder (no ``medsynth_app`` import, except in local mode's own
process).

- ``contrasts``: a byte-equal copy of the library's contrast name rules (``medsynth_app/contrasts.py``).
- ``client``: the REST client of the MedSynth MONAI Label server (synthesis, datastore upload, training).
- ``logic``: which contrasts to send, one study per synthesis, selector pre-filling, result names and attributes,
  window/level, model summaries, and a background-thread runner polled from the GUI thread.
- ``hierarchy``: patient and study of a volume in the subject hierarchy; results placed beside their inputs.
- ``mrml_io``: MRML volume node <-> file, geometry kept; detached copies for worker threads; the compare layout.
- ``workflow``: one synthesis, MRML nodes in, new MRML nodes out.
- ``study``: the acquired partner of a synthetic volume, and sending a study to the server's datastore.
- ``local`` / ``local_runner``: local mode in a separate PythonSlicer process, and what to install for it.
"""
