"""Property-based round trip of prepare()/restore() over random grids (hypothesis)."""
import numpy as np
import SimpleITK as sitk
from hypothesis import given, settings, strategies as st

from medsynth_app.preprocessing import prepare, restore

angles = st.floats(-np.pi, np.pi, allow_nan=False)
spacings = st.floats(0.3, 5.0, allow_nan=False)
sizes = st.integers(6, 28)
axis_orders = st.permutations([0, 1, 2])
flips = st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3)


@settings(max_examples=60, deadline=None)
@given(sizes=st.tuples(sizes, sizes, sizes), spacing=st.tuples(spacings, spacings, spacings),
       rotation=st.tuples(angles, angles, angles), order=axis_orders, flip=flips,
       origin=st.tuples(*[st.floats(-300, 300, allow_nan=False)] * 3), divisor=st.sampled_from([1, 4, 16]),
       seed=st.integers(0, 2**16))
def test_round_trip_restores_values_and_geometry(sizes, spacing, rotation, order, flip, origin, divisor, seed):
    euler = sitk.Euler3DTransform()
    euler.SetRotation(*rotation)
    direction = np.array(euler.GetMatrix()).reshape(3, 3)[:, order] * np.array(flip)
    rng = np.random.default_rng(seed)
    data = np.zeros(sizes[::-1], np.float32)
    inner = tuple(slice(1, s - 1) for s in sizes[::-1])
    data[inner] = rng.uniform(10, 100, [s - 2 for s in sizes[::-1]])
    image = sitk.GetImageFromArray(data)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(direction.ravel()))
    image.SetOrigin(origin)

    subject = prepare({"T2": image}, "T2", divisor=divisor)
    back = restore(subject.images["T2"], subject, subject.norms["T2"])

    assert back.GetSize() == image.GetSize() and back.GetSpacing() == image.GetSpacing()
    assert back.GetOrigin() == image.GetOrigin() and back.GetDirection() == image.GetDirection()
    assert all(s % divisor == 0 for s in subject.shape)
    restored = sitk.GetArrayFromImage(back)
    assert np.allclose(restored, data, rtol=1e-5, atol=1e-3)
