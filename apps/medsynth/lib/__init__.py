"""MedSynth MONAI Label app: task configs (lib/configs) and infer tasks (lib/infers)."""
