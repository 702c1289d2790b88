"""Local mode's own process: ``PythonSlicer local_runner.py '<json request>'``.

Requests: {"action": "models"} lists the installed checkpoints; {"action": "synthesize", "model", "target",
"files": {contrast: path}, "out_dir"} synthesises. Prints ``progress <text>`` lines and, last, ``result <json>``;
any failure exits with status 1 and its message on stderr.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the module folder holding MedSynthLib

from MedSynthLib.local import local_models, synthesize_local  # noqa: E402


def main(argv):
    request = json.loads(argv[1])
    if request["action"] == "models":
        result = local_models()
    else:
        print(f"progress synthesising {request['target']} with {request['model']} in a local process...", flush=True)
        path, params = synthesize_local(request["model"], request["target"], request["files"], request["out_dir"])
        result = {"path": path, "params": params}
    print("result " + json.dumps(result), flush=True)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Exception as err:  # noqa: BLE001 - reported to the module through stderr and the exit status
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)
