from setuptools import find_packages, setup

# One pinned, known-good set: torch is pinned here so that pip never swaps in a CUDA build (GPU users install the
# CUDA build of the same torch version first, see README). pydicom 3 breaks monailabel 0.8.5.
REQUIREMENTS = [
    "torch==2.13.0",
    "monai==1.6.1",
    "monailabel==0.8.5",
    "pydicom<3",
    "nibabel>=5.2",
    "SimpleITK>=2.3",
    "numpy",
    "scipy>=1.11",
    "scikit-learn>=1.4",
    "scikit-image>=0.22",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "nilearn>=0.10",
    "requests>=2.31",
    "tensorboard>=2.15",
]

# The MONAI Label app and the Slicer module are developed in apps/medsynth and slicer_extension and shipped as package
# data of the deployment package (medsynth_server/app, medsynth_server/slicer), with the app's shipped weights.
APP_FILES = ["*.py", "lib/*.py", "lib/*/*.py", "model/*.pt", "model/*.json", "model/*.md"]
SLICER_FILES = ["CMakeLists.txt", "MedSynth.json", "MedSynth/*.py", "MedSynth/CMakeLists.txt",
                "MedSynth/MedSynthLib/*.py",
                "MedSynth/Resources/*/*", "MedSynth/Testing/CMakeLists.txt", "MedSynth/Testing/Python/*"]

setup(
    name="medsynth",
    version="0.1.0",
    description="MRI contrast synthesis: library, CLI, MONAI Label app and 3D Slicer module",
    packages=[*find_packages(include=["medsynth_app", "medsynth_app.*", "medsynth_server"]),
              "medsynth_server.app", "medsynth_server.slicer"],
    package_dir={"medsynth_server.app": "apps/medsynth", "medsynth_server.slicer": "slicer_extension"},
    package_data={"medsynth_app": ["data/*.json"], "medsynth_server.app": APP_FILES,
                  "medsynth_server.slicer": SLICER_FILES},
    python_requires=">=3.10",
    install_requires=REQUIREMENTS,
    extras_require={"test": ["pytest>=8", "slicer-core", "hypothesis>=6.100", "PySide6-Essentials"]},
    entry_points={
        "console_scripts": ["medsynth = medsynth_app.cli:main"],
        "medsynth.commands": ["demo = medsynth_server.commands:register_demo",
                              "serve = medsynth_server.commands:register_serve",
                              "model-versions = medsynth_server.commands:register_model_versions"],
        "medsynth.weight_folders": ["shipped = medsynth_server.resources:weight_folders"],
    },
)
