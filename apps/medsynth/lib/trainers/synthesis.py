"""MONAI Label train task for contrast synthesis: a thin layer over ``medsynth_app.pipeline.train``.

``POST /train/<family>`` with params ``{"target": "FLAIR", "inputs": ["T1", "T2"], "epochs": 10}`` (optional
``val_split`` (0.2), ``seed``, ``batch_size``, ``learning_rate``, ``device``, ``hparams``, ``pretrained``,
``multi_gpu``, ``gpus``, ``promote``) trains the family on the studies of the datastore that hold the target and
every input (multimodal with the hparam ``incomplete_studies``: the target and any of the inputs):

* studies are the datastore images grouped by file-name prefix (``sub01_T1``, ``sub01_T2``: the flat datastore,
  ``medsynth_app.studies.group_studies``, as the infer task does; on a PACS the studies and contrasts come from its
  metadata, lib/dicomweb.py, and only the series used are downloaded); images marked SYNTHETIC are never training
  material;
  a study's lesion mask is its ``<study>_lesion`` image or the ``labels/final`` label of one of its images;
* with ``pretrained`` true (the default, as in MONAI Label's BasicTrainTask) the network families start from the
  weights of the served checkpoint of the same task (fine-tuning, ``pipeline.train(init=...)``); the others, and
  ``pretrained`` false, train from scratch;
* a share ``val_split`` of the studies (at least one when there are two or more) is held out for validation, by the
  library's one rule (``folds.validation_split``);
* ``pipeline.train`` runs with ``TrainSettings(on_epoch=...)``: every epoch the progress (epoch, total_epochs,
  best_metric, total_time) is written to ``train_stats_<family>.json`` of the user model folder, which the server's
  ``/info`` ``train_stats`` reads (MONAI Label runs training in a subprocess: the file is how the two talk); it holds
  counts of studies, never their ids;
* on success the checkpoint is saved atomically as a new version of the task it retrains
  (``<user models>/versions/linear_T1+T2_to_FLAIR/v0003.pt``, ``medsynth_app.checkpoint_versions``), never into the
  app's ``model`` folder (the shipped weights). It becomes the served default (``served/linear_T1+T2_to_FLAIR.pt``)
  when ``promote`` is ``always``, or ``auto`` (the default) and it validates better than the served checkpoint on
  this run's validation studies (or nothing serves that task yet); the infer task sees the change and serves it
  without restart. ``medsynth model-versions --restore`` serves the previous one again. On failure or stop nothing
  is written and the previous weights stay served.

Stopping: ``DELETE /train/`` kills the training subprocess (SIGKILL, MONAI Label's own behaviour); the checkpoint is
only ever replaced by an atomic rename, so a kill leaves the previous one intact, and ``stats()`` reports a run whose
process is gone as STOPPED. A SIGTERM (or SIGINT) sent to the training process is honoured more gently: the family is
asked to stop at the end of the current epoch (``on_epoch`` returns True) and nothing is saved.

Multi-GPU: ``gpus`` ("all" or indices such as "0,1") chooses the GPUs, in synchronous and asynchronous runs alike.
With ``multi_gpu`` true (the default, as in MONAI Label's BasicTrainTask), two or more GPUs and a family that trains
one network data-parallel (synnet, multimodal, cae3d), the task re-launches MONAI Label's training entry point under
``torchrun --nproc_per_node=<GPUs>`` with exactly those GPUs visible (CUDA_VISIBLE_DEVICES); in each rank the
training engine's ``DistContext`` sets the device of its LOCAL_RANK and then joins the process group, and rank 0
alone writes the stats and the checkpoint. Closed-form and voxel-wise families run once, on the first GPU asked for;
so does every family with one GPU. Without GPUs training just runs in the subprocess.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from fastapi import HTTPException
from monailabel.interfaces.tasks.train import TrainTask

from medsynth_app.atomic import atomic_write
from medsynth_app.contrasts import CONTRASTS, canonical_contrast
from medsynth_app.folds import validation_split
from medsynth_app.imageio import is_synthetic_file
from medsynth_app.models import TrainSettings, create, fine_tunes
from medsynth_app.pipeline import evaluate, trainable_studies
from medsynth_app.pipeline import train as pipeline_train
from medsynth_app.training.distributed import env_rank
from medsynth_app.training.network_weights import NetworkWeights
from medsynth_app.studies import Study, group_studies
from medsynth_app.weights import checkpoint_name

from lib.infers.synthesis import TASK_TYPE

logger = logging.getLogger(__name__)

RUNNING, DONE, FAILED, STOPPED = "RUNNING", "DONE", "FAILED", "STOPPED"


class TrainRequestError(HTTPException):
    """A training request that cannot run as asked. Synchronous runs (``run_sync=true``) answer it as HTTP 4xx with
    ``{"detail": message}``; in MONAI Label's training subprocess it ends the run with status ERROR, the message being
    the last line of the task's ``details`` and the ``message`` of the train stats."""

    def __init__(self, message: str, status_code: int = 422):
        super().__init__(status_code=status_code, detail=message)

    def __str__(self) -> str:
        return str(self.detail)


def _scalar(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def datastore_studies(datastore) -> Tuple[List[Study], Dict[str, str]]:
    """The datastore's images grouped into studies by file-name prefix (``medsynth_app.studies.group_studies``; a
    PACS: by study, contrasts from its metadata, lib/dicomweb.py); returns (studies, skipped study -> reason)."""
    if hasattr(datastore, "study_contrasts"):
        return datastore.studies()
    image_ids: Dict[Path, str] = {}
    for image_id in sorted(datastore.list_images()):
        uri = datastore.get_image_uri(image_id)
        if uri and os.path.isfile(uri):
            image_ids[Path(uri)] = image_id
    studies, skipped = group_studies((path.name, path) for path in image_ids)
    kept = []
    for study in studies:
        for contrast, path in list(study.images.items()):
            if is_synthetic_file(path):
                skipped.setdefault(study.id, f"{path.name} is a synthetic image, not training material")
                del study.images[contrast]
        if study.lesion_mask is None:  # a lesion segmentation saved by a client (labels/final) for one of the images
            for contrast in ["FLAIR", *CONTRASTS]:
                if contrast in study.images:
                    label_id = datastore.get_label_by_image_id(image_ids[study.images[contrast]], "final")
                    uri = datastore.get_label_uri(label_id, "final") if label_id else ""
                    if uri and os.path.isfile(uri):
                        study.lesion_mask = Path(uri)
                        break
        if study.images:
            kept.append(study)
    return kept, skipped


class SynthesisTrainTask(TrainTask):
    """Retrain one family from the datastore; progress in ``model/train_stats_<name>.json``."""

    def __init__(self, config, description: str = ""):
        self._owner = config  # lib.family_config.SynthesisTaskConfig: its served checkpoints give the defaults
        self.family = config.family
        self.name = config.name
        self.versions = config.user_models  # medsynth_app.checkpoint_versions.CheckpointVersions
        self.stats_path = self.versions.root / f"train_stats_{self.name}.json"
        self._stop_requested = False
        super().__init__(description or f"MedSynth {self.family}: retrain from the datastore's acquired studies")

    # ---- /info ----------------------------------------------------------------------------------------------------
    def _served(self):
        self._owner.refresh()
        return list(self._owner.checkpoints)

    def config(self) -> Dict[str, Any]:
        targets = list(dict.fromkeys(t for _, c in self._served() for t in c.targets)) or list(CONTRASTS)
        return {
            "target": targets,  # a list is a drop-down in Slicer; the first item is the default
            "inputs": "",  # empty: the inputs of the served checkpoint for the target
            "epochs": 10,
            "val_split": 0.2,
            "seed": 0,
            "pretrained": True,
            "device": ["auto", "cpu", "cuda"],
            "multi_gpu": True,
            "gpus": "all",
            "promote": ["auto", "always", "never"],
        }

    def info(self) -> Dict[str, Any]:
        info = super().info()
        tasks = {}
        for path, ckpt in self._served():
            required, optional = ckpt.input_roles()
            for target in ckpt.targets:
                tasks.setdefault(target, []).append({
                    "checkpoint": path.name,
                    "inputs": list(ckpt.inputs),
                    "required_inputs": required,
                    "optional_inputs": optional,
                    "validation": (ckpt.training.get("validation") or {}).get(target, {}),
                    "hparams": ckpt.hparams,
                    "created": ckpt.created,
                })
        info.update(
            type=TASK_TYPE,
            family=self.family,
            targets=list(tasks),
            checkpoints=tasks,
            params={
                "target": "contrast to learn (any of " + ", ".join(CONTRASTS) + ")",
                "inputs": "input contrasts, a list or 'T1,T2'; default: those of the served checkpoint for target",
                "epochs": "epochs for the families that iterate (alias max_epochs); closed-form families run one",
                "val_split": "share of studies held out for validation (at least one of two or more)",
                "hparams": "optional family hyper-parameters; default: those of the served checkpoint",
                "pretrained": "start from the served checkpoint's weights (network families; default true)",
                "multi_gpu": "torchrun over the GPUs of `gpus` when there are two or more (network families only)",
                "gpus": "GPU indices to use, e.g. '0,1' (default all)",
                "promote": "auto: serve the new checkpoint only when it validates better than the served one on "
                           "this run's validation studies; always; never (kept as a version only)",
            },
            data="studies of the datastore whose target and inputs were acquired (file names <study>_<contrast>); "
                 "lesion masks from <study>_lesion images or labels/final",
            output=f"a new version of {checkpoint_name(self.family, ['<inputs>'], ['<target>'])} in the user model "
                   "folder; the shipped weights are never written",
        )
        return info

    def stats(self) -> Dict[str, Any]:
        try:
            stats = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}
        if stats.get("status") == RUNNING and not _alive(stats.get("pid")):
            stats["status"] = STOPPED
            stats.setdefault("message", "the training process ended before finishing (DELETE /train/ or killed)")
        return stats

    # ---- training -----------------------------------------------------------------------------------------------
    def __call__(self, request, datastore):
        req = self.config()
        req.update(request or {})
        if "max_epochs" in (request or {}) and "epochs" not in request:  # MONAI Label's (and Slicer's) name
            req["epochs"] = request["max_epochs"]
        gpus = _gpu_list(str(_scalar(req.get("gpus")) or "all"))
        if "WORLD_SIZE" not in os.environ and _as_bool(_scalar(req.get("multi_gpu", True))) and len(gpus) >= 2 \
                and self._data_parallel(req):
            return self._launch_distributed(req, gpus)
        if "WORLD_SIZE" not in os.environ and gpus and str(_scalar(req.get("device", "auto"))) in ("auto", "cuda"):
            req["device"] = f"cuda:{gpus[0]}"  # one process: the first GPU asked for
        return self._train(req, datastore)

    def _data_parallel(self, req: Dict[str, Any]) -> bool:
        """Whether the family trains one network data-parallel over ranks; the others (closed-form fits, voxel
        networks) would only run identical copies."""
        try:
            target, inputs, hparams, _, _ = self._resolve(req)
            return isinstance(create(self.family, inputs, [target], **hparams), NetworkWeights)
        except (ValueError, TrainRequestError):
            return False  # the single-process run reports the problem

    def _train(self, req: Dict[str, Any], datastore) -> Dict[str, Any]:
        rank = env_rank()  # under torchrun the engine's DistContext joins the process group
        started = time.time()
        stats: Dict[str, Any] = {"status": RUNNING, "family": self.family, "pid": os.getpid(),
                                 "start_ts": time.strftime("%Y-%m-%d %H:%M:%S"), "epoch": 0, "total_epochs": 0,
                                 "best_metric": None, "total_time": 0.0, "stage": "preparing"}

        def publish(**fields):
            stats.update(fields, total_time=round(time.time() - started, 2))
            if rank == 0:
                atomic_write(self.stats_path, lambda tmp: Path(tmp).write_text(json.dumps(stats, indent=2)),
                             suffix=".json")

        # Only in MONAI Label's training subprocess: a synchronous run (run_sync=true) happens in the server itself,
        # whose signal handlers must stay its own.
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} \
            if _in_training_process() else {}
        for sig in previous:
            signal.signal(sig, self._request_stop)
        self._stop_requested = False
        try:
            publish()
            target, inputs, hparams, out_name, served = self._resolve(req)
            init = served if served is not None and fine_tunes(self.family) and \
                _as_bool(_scalar(req.get("pretrained", True))) else None
            epochs = int(_scalar(req.get("epochs", 10)))
            if epochs < 1:
                raise TrainRequestError(f"epochs must be at least 1, not {epochs}")
            val_split = float(_scalar(req.get("val_split", 0.2)))
            if not 0 <= val_split < 1:
                raise TrainRequestError(f"val_split must be in [0, 1), not {val_split}")
            seed = int(_scalar(req.get("seed", 0)))
            studies, skipped = datastore_studies(datastore)
            try:
                usable = trainable_studies(self.family, inputs, [target], studies, hparams)
            except ValueError as err:  # an unknown or invalid hyper-parameter
                raise TrainRequestError(str(err)) from None
            if not usable:
                have = sorted({"+".join(s.contrasts) for s in studies}) or ["no image"]
                raise TrainRequestError(
                    f"no study of the datastore has {'+'.join([*inputs, target])} acquired "
                    f"(studies have: {'; '.join(have)}); cannot train {self.family} {'+'.join(inputs)}->{target}")
            train_set, val_set = validation_split(sorted(usable, key=lambda s: s.id), share=val_split)
            if hasattr(datastore, "study_contrasts"):  # a PACS: download only the series of the studies used
                publish(stage="downloading")
                for study in [*train_set, *val_set]:
                    datastore.fetch(study)
            promote = str(_scalar(req.get("promote", "auto")) or "auto").lower()
            if promote not in ("auto", "always", "never"):
                raise TrainRequestError(f"promote must be auto, always or never, not {promote!r}")
            # counts only: /info answers without authentication and must not list subject ids
            publish(target=target, inputs=inputs, checkpoint=out_name, total_epochs=epochs,
                    pretrained=out_name if init is not None else None, training_studies=len(train_set),
                    validation_studies=len(val_set), skipped=len(skipped), stage="training")
            logger.info("medsynth-train %s %s->%s: %d training, %d validation studies, %d epochs -> %s (skipped: %s)",
                        self.family, "+".join(inputs), target, len(train_set), len(val_set), epochs, out_name,
                        skipped or "none")

            def on_epoch(progress: dict) -> bool:
                metric = progress.get("best_metric")
                publish(epoch=int(progress.get("epoch", stats["epoch"])),
                        total_epochs=int(progress.get("total_epochs", epochs)),
                        best_metric=None if metric is None else float(metric),
                        loss=progress.get("loss"))
                logger.info("medsynth-train epoch %s/%s best_metric %s", stats["epoch"], stats["total_epochs"],
                            stats["best_metric"])
                return self._stop_requested

            device = str(_scalar(req.get("device", "auto")) or "auto")
            settings = TrainSettings(
                epochs=epochs, seed=seed, device=device, progress=False, on_epoch=on_epoch,
                batch_size=int(_scalar(req.get("batch_size", TrainSettings.batch_size))),
                learning_rate=None if req.get("learning_rate") in (None, "") else float(_scalar(req["learning_rate"])),
            )
            try:
                checkpoint = pipeline_train(self.family, inputs, [target], train_set, val_set, hparams=hparams,
                                            settings=settings, init=init)
            except (ValueError, RuntimeError) as err:  # StudyError, ImageError, a family's refusal
                raise TrainRequestError(f"training {self.family} {'+'.join(inputs)}->{target} failed: {err}") from None
            if self._stop_requested:
                publish(status=STOPPED, stage="stopped", message="stop requested; previous checkpoint kept")
                return self.stats()
            validation = (checkpoint.training.get("validation") or {}).get(target, {})
            best = stats["best_metric"]
            if validation.get("psnr") is not None:
                best = float(validation["psnr"])  # the key metric shown for synthesis: validation PSNR (dB)
            epochs_run = int(checkpoint.training.get("epochs", stats["epoch"] or epochs))
            promotion = {}
            if rank == 0:
                version = self.versions.add(checkpoint, out_name)
                promotion = self._promote(promote, out_name, version, checkpoint, served, val_set, target, inputs)
            publish(status=DONE, stage="done", epoch=max(stats["epoch"], epochs_run),
                    total_epochs=max(stats["total_epochs"], epochs_run) if stats["epoch"] else epochs_run,
                    best_metric=best, best_metric_name="validation psnr" if validation else stats.get("best_metric_name"),
                    validation=validation, training_subjects=len(checkpoint.training.get("subjects", [])),
                    created=checkpoint.created, **promotion)
            logger.info("medsynth-train done: %s (validation %s)", promotion.get("message"), validation)
            return dict(stats)
        except TrainRequestError as err:
            publish(status=FAILED, stage="failed", message=str(err))
            logger.error("medsynth-train FAILED: %s", err)
            raise
        except BaseException as err:
            publish(status=FAILED, stage="failed", message=f"{type(err).__name__}: {err}")
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _promote(self, promote: str, name: str, version: Path, checkpoint, served, val_set, target: str,
                 inputs: List[str]) -> Dict[str, Any]:
        """Serve ``version`` as ``name`` when asked, or (``auto``) when nothing serves that task yet or it
        validates better than the served checkpoint: mean PSNR of both on this run's validation studies."""
        compared: Dict[str, Any] = {}
        if promote == "auto" and served is not None:
            if not val_set:
                reason, better = "no validation study to compare it with the served checkpoint", False
            else:
                new, old = (_mean_psnr(evaluate(c, val_set, target, inputs, progress=False))
                            for c in (checkpoint, served))
                compared = {"validation_psnr": new, "served_validation_psnr": old}
                better = new > old
                reason = f"validation PSNR {new:.3f} dB against the served {old:.3f} dB"
        else:
            better = promote == "always" or served is None
            reason = {"always": "promote: always", "never": "promote: never"}.get(promote, "nothing served for it")
        if better and promote != "never":
            self.versions.serve(name, version)
        promoted = better and promote != "never"
        message = f"saved version {version.name} of {name}; {'now served' if promoted else 'not served'} ({reason})"
        return {"version": version.name, "promoted": promoted, "message": message, **compared}

    def _request_stop(self, signum, frame):
        logger.info("medsynth-train: signal %s, stopping after this epoch", signum)
        self._stop_requested = True

    def _resolve(self, req: Dict[str, Any]):
        """(target, inputs, hparams, checkpoint file name, the served checkpoint of that task or None) of a request;
        defaults from the served checkpoints."""
        served = self._served()
        raw_target = _scalar(req.get("target"))
        if not raw_target:
            raise TrainRequestError("params must name a target contrast to learn, e.g. {\"target\": \"FLAIR\"}")
        try:
            target = canonical_contrast(str(raw_target))
        except ValueError as err:
            raise TrainRequestError(f"target: {err}") from None
        raw_inputs = req.get("inputs")
        if isinstance(raw_inputs, str):
            raw_inputs = [s for s in raw_inputs.replace("+", ",").split(",") if s.strip()]
        if isinstance(raw_inputs, dict):
            raw_inputs = list(raw_inputs)
        same_target = [(p, c) for p, c in served if c.targets == [target]]
        if raw_inputs:
            try:
                inputs = list(dict.fromkeys(canonical_contrast(str(c).strip()) for c in raw_inputs))
            except ValueError as err:
                raise TrainRequestError(f"inputs: {err}") from None
        elif same_target:
            inputs = list(same_target[0][1].inputs)
        else:
            raise TrainRequestError(f"params must name the inputs for {target} (no served {self.family} checkpoint "
                                    "synthesises it), e.g. {\"inputs\": [\"T1\", \"T2\"]}")
        if target in inputs:
            raise TrainRequestError(f"{target} is both the target and an input")
        match = [(p, c) for p, c in same_target if sorted(c.inputs) == sorted(inputs)]
        hparams = dict(match[0][1].hparams) if match else {}
        extra = req.get("hparams") or {}
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except ValueError:
                raise TrainRequestError(f"hparams must be a JSON object, not {extra!r}") from None
        if not isinstance(extra, dict):
            raise TrainRequestError("hparams must be an object of family hyper-parameters")
        hparams.update(extra)
        if match:  # retrain a served task: same input order, same file name
            return target, list(match[0][1].inputs), hparams, match[0][0].name, match[0][1]
        inputs = [c for c in CONTRASTS if c in inputs]
        return target, inputs, hparams, checkpoint_name(self.family, inputs, [target]), None

    def _launch_distributed(self, req: Dict[str, Any], gpus: List[str]) -> Dict[str, Any]:
        """Run this training under torchrun, one process per GPU of ``gpus`` (made the only visible devices);
        returns rank 0's stats."""
        request = {k: v for k, v in req.items() if k != "local_rank"}
        request["device"] = "cuda"  # each rank's DistContext takes the GPU of its LOCAL_RANK
        cmd = torchrun_command(request, len(gpus))
        logger.info("medsynth-train: multi-GPU over GPUs %s: %s", ",".join(gpus), " ".join(cmd))
        done = subprocess.run(cmd, env={**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}, check=False)
        stats = self.stats()
        if done.returncode != 0:
            raise RuntimeError(f"torchrun ended with status {done.returncode}: {stats.get('message', '')}")
        return stats


def torchrun_command(request: Dict[str, Any], world_size: int) -> List[str]:
    """``python -m torch.distributed.run --nproc_per_node N -m monailabel.interfaces.utils.app -m train -r ...``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
            "-m", "monailabel.interfaces.utils.app", "-m", "train", "-r",
            json.dumps(request, separators=(",", ":"))]


def _gpu_list(gpus: str) -> List[str]:
    """The GPU indices a request asks for: its comma list, or every visible GPU for "all" (none without CUDA)."""
    if gpus.strip() not in ("", "all"):
        return [g.strip() for g in gpus.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _mean_psnr(rows: List[Dict[str, Any]]) -> float:
    scores = [r["psnr"] for r in rows if "psnr" in r]
    if not scores:
        raise TrainRequestError(f"no validation study could be scored: {[r.get('error') for r in rows]}")
    return round(float(sum(scores) / len(scores)), 4)


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _alive(pid) -> bool:
    try:
        import psutil

        process = psutil.Process(int(pid))
        return process.status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def _in_training_process() -> bool:
    """True in the process MONAI Label starts for a training (``python -m monailabel.interfaces.utils.app -m train``,
    also under torchrun), in its main thread."""
    import threading

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return (getattr(spec, "name", "") == "monailabel.interfaces.utils.app"
            and threading.current_thread() is threading.main_thread())
