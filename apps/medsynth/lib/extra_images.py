"""Further images of an infer answer (the uncertainty map) as further fields of MONAI Label's multipart answer.

MONAI Label's ``send_response`` answers one image and the params; an infer task may name more files in its params
under ``extra_images`` ({field name: path}). `install` wraps ``send_response`` so that the multipart answer carries
each as a field of that name (with its file name, as the image field does), the JSON answer omits the server paths,
and the files are removed once sent.
"""
from __future__ import annotations

import json
import os

import monailabel.endpoints.infer as infer_endpoint
from fastapi import Response
from monailabel.utils.others.generic import get_mime_type, remove_file
from requests_toolbelt import MultipartEncoder

EXTRA_IMAGES = "extra_images"


def install() -> None:
    original = infer_endpoint.send_response
    if getattr(original, "medsynth_extra_images", False):
        return

    def send_response(datastore, result, output, background_tasks):
        params = result.get("params")
        extras = params.pop(EXTRA_IMAGES, {}) if isinstance(params, dict) else {}
        for path in extras.values():
            background_tasks.add_task(remove_file, path)
        image = result.get("file")
        if not extras or output in ("json", "image", "dicom_seg") or not image or not os.path.exists(image):
            return original(datastore, result, output, background_tasks)
        background_tasks.add_task(remove_file, image)
        fields = {"params": (None, json.dumps(params), "application/json")}
        for name, path in {"image": image, **extras}.items():
            with open(path, "rb") as handle:
                fields[name] = (os.path.basename(path), handle.read(), get_mime_type(path))
        message = MultipartEncoder(fields=fields)
        return Response(content=message.to_string(), media_type=message.content_type)

    send_response.medsynth_extra_images = True
    infer_endpoint.send_response = send_response
