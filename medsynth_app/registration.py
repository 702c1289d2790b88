"""Alignment of a study's contrasts onto the grid of its reference contrast."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def same_grid(a: sitk.Image, b: sitk.Image, tolerance_mm: float = 1e-3) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tolerance_mm``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-5, atol=1e-6)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance_mm)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    )


def register_rigid(fixed: sitk.Image, moving: sitk.Image, seed: int = 0) -> sitk.Euler3DTransform:
    """Rigid transform mapping ``fixed`` physical points into ``moving`` (ITK convention), by Mattes mutual information.

    Multi-resolution (shrink 4, 2, 1; smoothing 2, 1, 0 mm), starting from the scanner frame (identity): contrasts of
    one session already share it, so a geometric-centre initialisation would only add error for differing fields of
    view. The result is kept only when it improves the metric over identity.
    """
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    initial = sitk.Euler3DTransform()
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    initial.SetCenter(centre)

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # About 40k samples per level whatever the image size: enough for a rigid fit, and seconds instead of minutes.
    voxels = float(np.prod(fixed.GetSize()))
    method.SetMetricSamplingPercentagePerLevel(
        [min(1.0, 40_000 * shrink**3 / voxels) for shrink in (4, 2, 1)], seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=100, relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    result = method.Execute(fixed, moving)
    transform = sitk.Euler3DTransform(sitk.CompositeTransform(result).GetNthTransform(0))

    def metric(t: sitk.Transform) -> float:
        evaluator = sitk.ImageRegistrationMethod()
        evaluator.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
        evaluator.SetMetricSamplingStrategy(evaluator.NONE)
        evaluator.SetInterpolator(sitk.sitkLinear)
        evaluator.SetInitialTransform(t)
        return evaluator.MetricEvaluate(fixed, moving)

    return transform if metric(transform) < metric(initial) else initial


def align_to(reference: sitk.Image, moving: sitk.Image, register: bool, interpolator=sitk.sitkLinear) -> sitk.Image:
    """``moving`` on the grid of ``reference``: unchanged when the grids match, else registered (or placed by its
    header when ``register`` is False) and resampled."""
    if same_grid(reference, moving):
        aligned = sitk.Image(moving)
        aligned.CopyInformation(reference)
        return aligned
    transform = register_rigid(reference, moving) if register else sitk.Transform()
    return sitk.Resample(moving, reference, transform, interpolator, 0.0, moving.GetPixelID())
